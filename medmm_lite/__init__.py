"""medmm_lite: the small helper library of medmm-course.

Every lesson imports it; each piece is written to be read. Public names:
``seed_everything``, ``get_device``, ``profile``, ``record``; submodules
``data``, ``models``, ``objectives``, ``train``, ``hub``, ``eval``, ``adapt``.
"""
from .profiles import Profile, profile
from .results import record, recorded, show_recorded
from .utils import get_device, seed_everything

__version__ = "0.1.0"


def profile_summary(P: Profile) -> str:
    """One line a learner reads at the top of a lesson: what the profile ``P`` trains, and where."""
    return (f"profile {P.name!r} on {P.device}: {P.n_studies:,} studies of {P.image_size}x{P.image_size} px; "
            f"transformers {P.dim} wide, {P.depth} blocks, {P.patch_size}-px patches ({P.vit_stem} stem, "
            f"{P.vit_pool} pooling); {P.steps} steps of {P.batch_size} at learning rate {P.lr:g}")


__all__ = ["Profile", "profile", "profile_summary", "record", "recorded", "show_recorded", "get_device",
           "seed_everything", "__version__"]
