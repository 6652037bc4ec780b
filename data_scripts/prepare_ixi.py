#!/usr/bin/env python
"""Download IXI's T1 and T2 (optionally PD) tarballs and prepare paired axial slices.

    python data_scripts/prepare_ixi.py                     # T1 + T2, 128 px, 1 slice per subject
    python data_scripts/prepare_ixi.py --contrasts T1 T2 PD --slices-per-subject 5

Needs nibabel (pip install nibabel). Then in lessons 06 and 11: DATASET = "ixi".
T1 and T2 are not registered in IXI: slices are paired through the scanner coordinates (see
medmm_lite/data/real/ixi.py for exactly how, and the limit of it).
"""
import sys

from _common import common_kwargs, make_parser, run

from medmm_lite.data.real import ixi


def main(argv=None) -> int:
    parser = make_parser("ixi", "Download IXI-T1.tar and IXI-T2.tar (and IXI-PD.tar with --contrasts ... PD; "
                                "resumable; the first download's size and SHA-256 are recorded), pair each "
                                "subject's volumes on the T2's axial grid and save central slices.")
    parser.add_argument("--contrasts", nargs="+", default=["T1", "T2"], choices=list(ixi.CONTRASTS),
                        help="contrasts to fetch (T1 and T2 are always included)")
    parser.add_argument("--size", type=int, default=128, help="stored slice size in pixels (default 128)")
    parser.add_argument("--slices-per-subject", type=int, default=1,
                        help="axial slices per subject around the centre (default 1)")
    parser.add_argument("--spacing-mm", type=float, default=5.0, help="distance between those slices (default 5)")
    parser.add_argument("--max-subjects", type=int, default=None, help="stop after this many subjects (for a try)")
    args = parser.parse_args(argv)
    return run("ixi", ixi.download_and_prepare, args, contrasts=tuple(args.contrasts), size=args.size,
               slices_per_subject=args.slices_per_subject, spacing_mm=args.spacing_mm,
               max_subjects=args.max_subjects, **common_kwargs(args))


if __name__ == "__main__":
    sys.exit(main())
