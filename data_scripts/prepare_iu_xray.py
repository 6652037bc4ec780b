#!/usr/bin/env python
"""Download and prepare IU X-ray (Open-I): 7,470 chest radiographs with 3,955 reports.

    python data_scripts/prepare_iu_xray.py                 # into $MEDMM_DATA/iu_xray
    python data_scripts/prepare_iu_xray.py --data-dir /data

Then in a lesson: DATASET = "iu_xray".
"""
import sys

from _common import common_kwargs, make_parser, run

from medmm_lite.data.real import iu_xray


def main(argv=None) -> int:
    parser = make_parser("iu_xray", "Download Open-I's NLMCXR_reports.tgz and NLMCXR_png.tgz (resumable; the first "
                                    "download's size and SHA-256 are recorded, since Open-I publishes no checksum), "
                                    "extract them, and pair reports with images through their parentImage ids.")
    args = parser.parse_args(argv)
    return run("iu_xray", iu_xray.download_and_prepare, args, **common_kwargs(args))


if __name__ == "__main__":
    sys.exit(main())
