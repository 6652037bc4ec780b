#!/usr/bin/env python
"""Download and prepare MedMNIST's ChestMNIST (NIH ChestX-ray14 at 28/64/128/224 px).

    python data_scripts/prepare_chestmnist.py --size 64    # into $MEDMM_DATA/chestmnist/64px

Then in a lesson: DATASET = "chestmnist" (image-only lessons: it has no reports).
"""
import sys

from _common import common_kwargs, make_parser, run

from medmm_lite.data.real import chestmnist


def main(argv=None) -> int:
    parser = make_parser("chestmnist", "Download chestmnist[_SIZE].npz from Zenodo (resumable), check it against "
                                       "MedMNIST's published MD5 and its arrays, and place it with its licence.")
    parser.add_argument("--size", type=int, choices=chestmnist.SIZES, default=64,
                        help="image size of the MedMNIST file (default 64; lessons resize from the nearest "
                             "prepared size at or above their image_size)")
    parser.add_argument("--md5", default=None,
                        help="expected MD5 when --mirror serves a different build (default: MedMNIST's published MD5)")
    args = parser.parse_args(argv)
    return run("chestmnist", chestmnist.download_and_prepare, args, size=args.size, md5=args.md5,
               **common_kwargs(args))


if __name__ == "__main__":
    sys.exit(main())
