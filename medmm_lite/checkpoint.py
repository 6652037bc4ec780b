"""``fit``'s checkpoints: what one holds, how it is written, and how a run resumes from it.

A checkpoint is everything a run needs to go on as if it had never stopped: the model, the
optimiser, the learning-rate schedule, the float16 loss scaler, the history so far, and every
random stream (Python's, NumPy's, torch's on CPU and GPU, and the generators ``loss_fn`` draws
augmentations and masks from). It also holds the settings that decide the result (``config``):
resuming under other settings would reproduce neither run, so :func:`resume` refuses.

Files are written whole or not at all (:func:`medmm_lite.utils.atomic_save`): a run killed while
saving leaves the previous checkpoint, never half of a new one.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .utils import atomic_save

CHECKPOINT_FORMAT = "medmm_lite.fit/1"


# --------------------------------------------------------------------------- random streams
def as_generators(rng) -> list[torch.Generator]:
    """``rng`` (``None``, a ``torch.Generator`` or a list of them) as a list, with a clear error otherwise."""
    if rng is None:
        return []
    generators = [rng] if isinstance(rng, torch.Generator) else list(rng)
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"rng must be a torch.Generator or a list of them, got a {type(g).__name__}")
    return generators


def rng_state(device: torch.device, generators=()) -> dict:
    """Every random stream of this process, as tensors and numbers (``torch.load(weights_only=True)`` reads it)."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "generators": [g.get_state() for g in generators],
    }


def set_rng_state(state: dict, device: torch.device, generators=(), path=None) -> None:
    """Put back what :func:`rng_state` saved; ``path`` names the checkpoint in errors and warnings."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    if not generators:
        return
    saved = state.get("generators")
    if saved is None:  # written before fit saved generators: resume, but not exactly
        warnings.warn(f"checkpoint {path} holds no state for the rng generators: they restart from their seeds, "
                      "so the resumed run's random draws differ from an uninterrupted run's", stacklevel=3)
        return
    if len(saved) != len(generators):
        raise ValueError(f"checkpoint {path} holds {len(saved)} rng generator states but fit was given "
                         f"{len(generators)}; delete it or use another checkpoint_path")
    for g, g_state in zip(generators, saved):
        g.set_state(g_state)


# --------------------------------------------------------------------------- saving
def save_checkpoint(path: Path, *, step: int, config: dict, model: nn.Module, optimizer, scheduler, scaler,
                    history, device: torch.device, generators=()) -> None:
    """Write the state after ``step`` updates to ``path``. Every process must call it (each one's
    random streams are saved); only the main process writes."""
    rng_states = dist_utils.all_gather_objects(rng_state(device, generators))  # every process's
    if dist_utils.is_main_process():
        state = {"format": CHECKPOINT_FORMAT, "step": step, "config": config,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "history": history.to_dict(), "rng": rng_states[0]}
        if dist_utils.is_distributed():
            state["rng_per_rank"] = rng_states
        atomic_save(lambda tmp: torch.save(state, tmp), path)
    dist_utils.barrier()  # nobody goes on (or exits) before the checkpoint is on disk


# --------------------------------------------------------------------------- resuming
def checkpoint_exists(path: Path) -> bool:
    """Whether ``path`` exists; under several processes, an error unless all of them see the same."""
    exists = path.exists()
    if dist_utils.is_distributed() and len(set(dist_utils.all_gather_objects(exists))) > 1:
        raise RuntimeError(f"checkpoint {path} is visible to some processes only: put checkpoints on a "
                           "filesystem that every node sees, so that all processes resume together")
    return exists


def check_architecture(path: Path, checkpoint_state: Mapping, model: nn.Module) -> None:
    """An error naming the differing keys and shapes unless ``checkpoint_state`` fits ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(checkpoint_state))
    unexpected = sorted(set(checkpoint_state) - set(expected))
    reshaped = sorted(f"{k}: {tuple(checkpoint_state[k].shape)} in the file, {tuple(v.shape)} in the model"
                      for k, v in expected.items()
                      if k in checkpoint_state and tuple(checkpoint_state[k].shape) != tuple(v.shape))
    if missing or unexpected or reshaped:
        def few(items):
            return f"{items[:8]}{f' and {len(items) - 8} more' if len(items) > 8 else ''}"
        raise ValueError(f"checkpoint {path} was written for a different model: missing keys {few(missing)}, "
                         f"unexpected keys {few(unexpected)}"
                         + (f", mismatched shapes {few(reshaped)}" if reshaped else "")
                         + "; delete it or use another checkpoint_path")


def resume(path: Path, model, optimizer, scheduler, scaler, config: dict, device, generators=()) -> tuple:
    """Load the checkpoint at ``path`` into the model, optimiser, schedule, scaler and random streams,
    after checking it was written by a run with the same ``config``; returns ``(step, History)``."""
    from .train import History  # here, not at the top: train imports this module

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                           "delete it to train from the start") from err
    if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by medmm_lite.train.fit; "
                         "delete it or use another checkpoint_path")
    check_architecture(path, state["model"], model)
    different = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if different:
        listed = ", ".join(f"{k}={old!r} there but {new!r} now" for k, (old, new) in different.items())
        raise ValueError(f"checkpoint {path} was written by a run with other settings ({listed}); resuming "
                         "would not reproduce either run. Delete it or use another checkpoint_path")
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as err:
        raise ValueError(f"checkpoint {path} trained a different set of parameters ({err}); "
                         "delete it or use another checkpoint_path") from err
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    # each process continues its own random streams (rank 0's when the file has one set only)
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    ranks, me = dist_utils.world_size(), dist_utils.rank()
    if len(per_rank) != ranks and me == 0:
        warnings.warn(f"checkpoint {path} was written by {len(per_rank)} process(es), resumed on {ranks}: the "
                      "batches are the same, random augmentations and masks are not", stacklevel=3)
    set_rng_state(per_rank[me] if me < len(per_rank) else per_rank[0], device, generators, path)
    return int(state["step"]), History.from_dict(state["history"])


__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "resume", "checkpoint_exists", "check_architecture",
           "as_generators", "rng_state", "set_rng_state"]
