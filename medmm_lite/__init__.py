"""medmm_lite: the small helper library of medmm-course.

Every lesson imports it; each piece is written to be read. Public names:
``seed_everything``, ``get_device``, ``profile``, ``record``; submodules
``data``, ``models``, ``objectives``, ``train``, ``hub``, ``eval``, ``adapt``.
"""
from .profiles import Profile, profile
from .results import record, recorded, show_recorded
from .utils import get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["Profile", "profile", "record", "recorded", "show_recorded", "get_device", "seed_everything", "__version__"]
