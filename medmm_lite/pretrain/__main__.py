"""``python -m medmm_lite.pretrain --objective clip --profile smoke --out runs/clip``: see ``cli.py``."""
from .cli import main

raise SystemExit(main())
