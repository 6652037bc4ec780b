"""``load_or_train``: train a model once, reuse it in every later lesson.

Lesson 02 pretrains a CLIP model; lessons 03, 09 and 10 need one too. Instead of
training it again each time, a lesson asks::

    model, info = load_or_train("clip_vit", train_fn, build_fn=build_model,
                                key={"profile": P.name, "seed": SEED, "dim": P.dim, "steps": P.steps})

The first call builds the model, trains it with ``train_fn(model)`` and saves it;
every later call with the same name and key (in any lesson, in any process) builds
a fresh model and loads the saved weights into it. A lesson run alone, with an
empty cache, simply trains.

What makes a cached model "the same":
* ``name`` and ``key``: put in ``key`` everything that changes the result (profile,
  seed, sizes, objective, steps...). Anything left out is not checked.
* the code it depends on: the source of the ``medmm_lite`` modules that define the
  model's layers and the training function (and whatever those import from the
  library) is part of the key. Editing ``pretrain/clip.py`` retrains a CLIP model;
  editing ``widgets.py``, a lesson or a comment in an unrelated module does not.

Weights are stored with ``safetensors`` (no pickle: loading runs no code), which
also takes care of tied weights (a language model's input embedding shared with
its output layer is saved once). ``MEDMM_NO_CACHE=1`` forces training.

What is checked: ``info.json`` records the SHA-256 of the weights file, and a load checks
it, and that every weight is finite; a damaged, unverifiable or malformed entry is a
warning and the model is trained again. Two processes asking for the same model take
turns (a file lock per key, ``filelock``): the second loads what the first trained. A
model that cannot be saved (a full disk) is kept: a warning, and the call returns it.

Under ``torchrun`` every process trains (together, through ``fit``), and only rank 0
takes the lock, writes the files and logs; the others wait for it before they go on.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from . import distributed as dist_utils
from .train import History, max_steps
from .utils import NoSpaceLeftError, atomic_save, atomic_write_bytes, file_lock
from .utils import cache_dir as default_cache_dir

HUB_FORMAT = 1
log = logging.getLogger(__name__)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


PACKAGE = Path(__file__).resolve().parent


def _module_file(module: str) -> Path | None:
    if module != PACKAGE.name and not module.startswith(PACKAGE.name + "."):
        return None
    relative = Path(*module.split(".")[1:])
    for candidate in (PACKAGE / relative / "__init__.py", (PACKAGE / relative).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def _imported_modules(module: str) -> frozenset[str]:
    """The ``medmm_lite`` modules that ``module``'s source imports (read statically, nothing runs)."""
    path = _module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import module``
    return frozenset(m for m in found if _module_file(m) is not None)


def _referenced_modules(obj, depth: int = 3) -> set[str]:
    """Modules of ``obj`` and of the functions and classes its code names (globals, closure cells)."""
    found = {getattr(obj, "__module__", None) or ""}
    obj = getattr(obj, "func", obj)  # functools.partial
    code = getattr(obj, "__code__", None)
    if code is None or depth == 0:
        return found
    names = set(code.co_names)
    for const in code.co_consts:  # nested functions and lambdas
        if hasattr(const, "co_names"):
            names.update(const.co_names)
    referenced = [obj.__globals__.get(n) for n in names]
    referenced += [cell.cell_contents for cell in (obj.__closure__ or ()) if _cell_is_set(cell)]
    for value in referenced:
        if inspect.ismodule(value):
            found.add(value.__name__)
        elif callable(value):
            found |= _referenced_modules(value, depth - 1)
    return found


def _cell_is_set(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def source_modules(model: nn.Module, train_fn=None) -> list[str]:
    """The library modules a cached model depends on: those defining its layers, those its
    training function reaches, ``train`` (``fit``), and everything they import from the library."""
    seeds = {type(m).__module__ for m in model.modules()} | {"medmm_lite.train"}
    if train_fn is not None:
        seeds |= _referenced_modules(train_fn)
    todo = [m for m in seeds if _module_file(m) is not None]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imported_modules(module))
    return sorted(seen)


def code_version(modules=None) -> str:
    """A hash of the source of ``modules`` (default: the whole package).

    Package ``__init__`` files are followed for their imports but not hashed: they only
    re-export names, and hashing the top one would retrain every model on a version bump.
    """
    if modules is None:
        modules = sorted({".".join((PACKAGE.name, *p.relative_to(PACKAGE).with_suffix("").parts))
                          for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts})
    h = hashlib.sha256()
    for module in sorted(modules):
        path = _module_file(module)
        if path is None or path.name == "__init__.py":
            continue
        h.update(module.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- what a key holds
def data_fingerprint(data) -> str:
    """A short hash of what a pretraining run sees: training indices, their reports, their pixels.

    Part of every cache key, so a model trained on one cohort (or dataset, or split) is never
    served for another. Hashes a strided sample of the pixels to stay fast.
    """
    train = np.asarray(data.splits["train"], dtype=np.int64)
    h = hashlib.sha256(train.tobytes())
    h.update("\x00".join(data.cohort.reports[i] for i in train).encode())
    pixels = data.cohort.images[torch.from_numpy(train)]
    h.update(pixels.flatten()[:: max(1, pixels.numel() // 100_000)].contiguous().numpy().tobytes())
    h.update(data.input_ids[torch.from_numpy(train)].numpy().tobytes())
    return h.hexdigest()[:16]


def profile_key(P) -> dict:
    """The profile sizes that shape a pretrained model."""
    return {"profile": P.name, "image_size": P.image_size, "patch_size": P.patch_size, "dim": P.dim,
            "depth": P.depth, "heads": P.heads, "max_text_len": P.max_text_len, "vit_stem": P.vit_stem,
            "vit_pool": P.vit_pool}


def cache_key(name: str, key=None, modules=None) -> str:
    """The hex digest naming a cached model: its name, its ``key`` and the code it depends on."""
    try:
        key_json = json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"key must be JSON-able (a dict of strings, numbers, booleans and lists), "
                         f"got {key!r}: {err}") from err
    capped = max_steps()  # a dry run's few-step model must never be served for the real one
    payload = f"{HUB_FORMAT}|{name}|{key_json}|{code_version(modules)}" + (f"|max_steps={capped}" if capped else "")
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _encode_result(result):
    """``train_fn``'s return value as JSON: Histories become ``{"__history__": ...}``."""
    if result is None:
        return None
    if isinstance(result, History):
        return {"__history__": result.to_dict()}
    if isinstance(result, dict):
        return {str(k): _encode_result(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [_encode_result(v) for v in result]
    if isinstance(result, (str, int, float, bool)):
        return result
    if hasattr(result, "item") and getattr(result, "ndim", None) == 0:  # a 0-d tensor or NumPy scalar
        return result.item()
    raise TypeError(f"train_fn must return a History, a dict (of numbers, strings, lists, Histories) or None; "
                    f"it returned something holding a {type(result).__name__}")


def _decode_result(data):
    if isinstance(data, dict):
        if set(data) == {"__history__"}:
            return History.from_dict(data["__history__"])
        return {k: _decode_result(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_decode_result(v) for v in data]
    return data


def _build(build_fn) -> nn.Module:
    model = build_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_fn() must return a fresh nn.Module, got {type(model).__name__}")
    return model


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _non_finite(model: nn.Module) -> str | None:
    """The first parameter with a NaN or an infinity, or buffer with a NaN (a buffer may hold
    -inf on purpose, e.g. an attention mask), as "name (k of n values)"; None if all are fine."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if not tensor.is_floating_point():
                continue
            bad = ~torch.isfinite(tensor) if kind == "parameter" else torch.isnan(tensor)
            count = int(bad.sum())
            if count:
                return f"{kind} {name} ({count} of {tensor.numel()} values)"
    return None


def _read_info(meta: Path, digest: str) -> dict:
    """info.json, checked field by field: a malformed one raises ValueError (and the model is trained again)."""
    saved = json.loads(meta.read_text(encoding="utf-8"))
    if not isinstance(saved, dict):
        raise ValueError(f"info.json holds a {type(saved).__name__}, not an object")
    if saved.get("digest") != digest:
        raise ValueError(f"info.json belongs to {saved.get('name')}-{saved.get('digest')}")
    sha = saved.get("sha256")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError("info.json records no SHA-256 of the weights (written by an older version, or edited), "
                         "so they cannot be verified")
    seconds = saved.get("train_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"info.json: train_seconds must be a number, got {seconds!r}")
    try:
        history = _decode_result(saved.get("history"))
    except Exception as err:  # a History with missing or mistyped fields
        raise ValueError(f"info.json: the recorded history is malformed ({type(err).__name__}: {err})") from err
    return {"sha256": sha, "train_seconds": float(seconds), "history": history}


def _key_lock(root: Path, folder: Path):
    """One process at a time per cached model. Under torchrun only rank 0 takes it (the others
    train together with rank 0 and write nothing); they wait for it at the barrier."""
    if dist_utils.is_main_process():
        lock = file_lock(root / ".locks" / f"{folder.name}.lock", f"training or caching {folder.name}",
                         log=log.info)
    else:
        lock = contextlib.nullcontext()
    return lock


def load_or_train(name: str, train_fn, *, build_fn, key=None, cache_dir=None, retrain: bool = False,
                  device=None):
    """Load the model cached under ``name`` and ``key``, or build, train and cache it.

    Args:
        name: a short identifier, e.g. ``"clip_vit"`` (letters, digits, ``_ . -``).
        train_fn: ``train_fn(model)`` trains the model in place and returns its
            :class:`~medmm_lite.train.History`, a dict (JSON-able; History values allowed) or None.
        build_fn: ``build_fn()`` returns a fresh, untrained ``nn.Module`` of the right architecture.
        key: a JSON-able dict of everything the result depends on (profile, seed, sizes, objective).
        cache_dir: where to keep models; default ``medmm_lite.utils.cache_dir("models")``.
        retrain: train even if a cached model exists (and overwrite it).
        device: move the returned model there (default: leave it where ``build_fn``/``train_fn`` put it).

    Returns:
        ``(model, info)`` with ``info = {"cached": bool, "path": str | None, "history": History | dict | None,
        "seconds": float (this call), "train_seconds": float (the training, when it happened)}``.
        ``path`` is None when the trained model could not be written (a full disk: warned about).

    What is verified: ``info.json`` records the SHA-256 of the weights file; a cached model whose
    file does not match it, whose weights are not finite, that does not fit ``build_fn()``'s
    model, or whose ``info.json`` is malformed gives a warning and is trained again. Two
    processes asking for one model take turns (a file lock per key): the second loads what the
    first trained. A model that cannot be saved (full disk) is returned with a warning.
    ``MEDMM_NO_CACHE=1`` in the environment forces training.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be a short identifier like 'clip_vit' (letters, digits, _ . -), got {name!r}")
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable as train_fn(model), got {type(train_fn).__name__}")
    if not callable(build_fn):
        raise TypeError(f"build_fn must be callable as build_fn() -> nn.Module, got {type(build_fn).__name__}")
    started = time.perf_counter()
    model = _build(build_fn)
    modules = source_modules(model, train_fn)
    digest = cache_key(name, key, modules)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir("models")
    folder = root / f"{name}-{digest}"
    weights, meta = folder / "model.safetensors", folder / "info.json"
    no_cache = os.environ.get("MEDMM_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")

    with _key_lock(root, folder):
        dist_utils.barrier()  # under torchrun: nobody looks at the cache before rank 0 holds the lock
        if not (retrain or no_cache) and weights.exists() and meta.exists():
            try:
                saved = _read_info(meta, digest)
                actual = _file_sha256(weights)
                if actual != saved["sha256"]:
                    raise ValueError(f"the weights file's SHA-256 is {actual[:12]}..., info.json recorded "
                                     f"{saved['sha256'][:12]}... (the file was damaged or replaced)")
                load_model(model, str(weights), strict=True)
                bad = _non_finite(model)
                if bad is not None:
                    raise ValueError(f"the cached weights are not finite: {bad}")
            except Exception as err:  # truncated, garbled, unverifiable or written for another architecture
                warnings.warn(f"cached model {folder.name} cannot be used ({type(err).__name__}: {err}); "
                              "training it again", RuntimeWarning, stacklevel=2)
                model = _build(build_fn)  # the failed load may have filled part of the weights
            else:
                if device is not None:
                    model.to(device)
                log.info("loaded %s from the cache (training it took %.1f s)", folder.name, saved["train_seconds"])
                return model, {"cached": True, "path": str(weights), "history": saved["history"],
                               "seconds": time.perf_counter() - started, "train_seconds": saved["train_seconds"]}

        train_started = time.perf_counter()
        result = train_fn(model)
        train_seconds = time.perf_counter() - train_started
        encoded = _encode_result(result)

        path = str(weights)
        if dist_utils.is_main_process():  # every process holds the same weights; one writes them
            path = _save(model, name, digest, folder, {
                "name": name, "digest": digest, "key": key, "code_version": code_version(modules),
                "modules": modules, "train_seconds": train_seconds, "history": encoded,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        path = dist_utils.all_gather_objects(path)[0]  # what rank 0 managed to write
        if device is not None:
            model.to(device)
        return model, {"cached": False, "path": path, "history": _decode_result(encoded),
                       "seconds": time.perf_counter() - started, "train_seconds": train_seconds}


def _save(model: nn.Module, name: str, digest: str, folder: Path, info_json: dict) -> str | None:
    """Write the weights, then info.json with their SHA-256. Returns the weights' path, or None
    (with a warning) when the model cannot be cached: non-finite weights, or a full or
    read-only disk. The model itself is never lost: the caller returns it."""
    weights, meta = folder / "model.safetensors", folder / "info.json"
    bad = _non_finite(model)
    if bad is not None:
        warnings.warn(f"{name} trained to non-finite weights ({bad}); returning it, but not caching "
                      f"{folder.name}: a later call trains it again", RuntimeWarning, stacklevel=3)
        return None
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    try:
        atomic_save(lambda tmp: save_model(model, tmp, metadata={"name": name, "digest": digest}), weights,
                    needed_bytes=needed)
        info_json["sha256"] = _file_sha256(weights)
        atomic_write_bytes(meta, json.dumps(info_json, indent=1).encode())
    except OSError as err:
        for path in (meta, weights):  # never leave weights and an info.json that do not belong together
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(err, NoSpaceLeftError):
            why = f"no space left in the cache ({err.describe_need()})"
        else:
            why = f"{type(err).__name__}: {err.strerror or err}"
        warnings.warn(f"trained {name}, but could not cache it as {folder.name} ({why}); the model is returned "
                      "and will be trained again next time. Free some space, or set MEDMM_DATA to another "
                      "folder", RuntimeWarning, stacklevel=3)
        return None
    log.info("trained %s in %.1f s; cached as %s", name, info_json["train_seconds"], folder.name)
    return str(weights)


__all__ = ["load_or_train", "cache_key", "code_version", "source_modules", "data_fingerprint", "profile_key"]
