"""What the prepare_*.py scripts share: the same options, the licence printed first, and
errors reported as one clear message (not a traceback) with a non-zero exit status."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

try:
    import medmm_lite  # noqa: F401
except ImportError:                  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medmm_lite.data.real.common import INFO, DatasetNotAvailableError  # noqa: E402
from medmm_lite.data.real.download import DownloadError  # noqa: E402
from medmm_lite.utils import cache_dir  # noqa: E402


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    info = INFO[name]
    parser = argparse.ArgumentParser(
        prog=f"prepare_{name}.py", description=textwrap.fill(description, 88), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Size: {info.size}.\nLicence: {info.licence}\n  {info.licence_url}\nCite: {info.citation}\n"
               f"Fits: {info.fits}.\n\nRunning it again resumes an interrupted download and skips what is "
               "already prepared and valid.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where datasets live (default: $MEDMM_DATA, else ~/.cache/medmm); the dataset goes to "
                             f"DATA_DIR/{name}, downloads to DATA_DIR/downloads/{name}")
    parser.add_argument("--mirror", default=None, help="fetch from this base URL instead of the official source")
    parser.add_argument("--force", action="store_true", help="prepare again even if a complete copy exists")
    parser.add_argument("--delete-archives", action="store_true",
                        help="delete the downloaded archives after preparing (saves disk; a later --force "
                             "downloads them again)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    if name in UNPUBLISHED:
        parser.add_argument("--accept-new-checksum", action="store_true",
                            help=f"{UNPUBLISHED[name]} publishes no checksum, so the first download's size and SHA-256 "
                                 "are recorded and a later download that differs is refused; pass this to accept "
                                 "a file the source has changed, deliberately (the new one is recorded)")
    return parser


# Sources that publish no checksum: their first download is recorded and enforced.
UNPUBLISHED = {"iu_xray": "Open-I", "vqa_rad": "OSF", "ixi": "IXI"}


def common_kwargs(args) -> dict:
    kwargs = {"mirror": args.mirror, "force": args.force, "progress": not args.no_progress,
              "keep_archives": not args.delete_archives}
    if hasattr(args, "accept_new_checksum"):
        kwargs["accept_new_checksum"] = args.accept_new_checksum
    return kwargs


def run(name: str, prepare, args, **kwargs) -> int:
    """Call ``prepare(data_dir, **kwargs)``; turn the expected failures into a message and exit 1."""
    data_dir = args.data_dir if args.data_dir is not None else cache_dir()
    info = INFO[name]
    print(f"{info.title}\nLicence: {info.licence} ({info.licence_url})\nCite: {info.citation}\n", flush=True)
    try:
        final = prepare(data_dir, **kwargs)
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing half-prepared was left in {data_dir / name}; run the same command again to "
              "resume the download", file=sys.stderr)
        return 130
    except (DownloadError, DatasetNotAvailableError, ImportError, ValueError, OSError) as err:
        print(f"prepare_{name}.py failed: {err}", file=sys.stderr)
        return 1
    where = "" if args.data_dir is None else f' with root="{final}" (or set MEDMM_DATA={data_dir})'
    print(f'\n{name} is ready in {final}. In a lesson: DATASET = "{name}"{where}')
    return 0
