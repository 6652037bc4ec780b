#!/usr/bin/env python
"""Download and prepare VQA-RAD: 315 radiology images, 2,248 clinicians' questions and answers.

    python data_scripts/prepare_vqa_rad.py                 # into $MEDMM_DATA/vqa_rad

Then in lesson 07: DATASET = "vqa_rad".
"""
import sys

from _common import common_kwargs, make_parser, run

from medmm_lite.data.real import vqa_rad


def main(argv=None) -> int:
    parser = make_parser("vqa_rad", "Download the VQA-RAD project from OSF as one zip (its CRCs are checked; OSF "
                                    "publishes no checksum, so the first download's SHA-256 is recorded), and keep "
                                    "'VQA_RAD Dataset Public.json' and 'VQA_RAD Image Folder'. --mirror is the URL "
                                    "of a zip with the same content.")
    args = parser.parse_args(argv)
    return run("vqa_rad", vqa_rad.download_and_prepare, args, **common_kwargs(args))


if __name__ == "__main__":
    sys.exit(main())
