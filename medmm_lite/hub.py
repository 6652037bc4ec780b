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

Under ``torchrun`` every process trains (together, through ``fit``), and only rank 0
writes the files and prints; the others wait for it before they go on.
"""
from __future__ import annotations

import ast
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

from safetensors.torch import load_model, save_model
from torch import nn

from . import distributed as dist_utils
from .train import History
from .utils import atomic_save, atomic_write_bytes
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


def cache_key(name: str, key=None, modules=None) -> str:
    """The hex digest naming a cached model: its name, its ``key`` and the code it depends on."""
    try:
        key_json = json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"key must be JSON-able (a dict of strings, numbers, booleans and lists), "
                         f"got {key!r}: {err}") from err
    payload = f"{HUB_FORMAT}|{name}|{key_json}|{code_version(modules)}"
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
        ``(model, info)`` with ``info = {"cached": bool, "path": str, "history": History | dict | None,
        "seconds": float (this call), "train_seconds": float (the training, when it happened)}``.

    A cached file that cannot be read, or does not fit ``build_fn()``'s model, gives a warning
    and the model is trained again. ``MEDMM_NO_CACHE=1`` in the environment forces training.
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

    if not (retrain or no_cache) and weights.exists() and meta.exists():
        try:
            saved = json.loads(meta.read_text())
            if saved.get("digest") != digest:
                raise ValueError(f"info.json belongs to {saved.get('name')}-{saved.get('digest')}")
            load_model(model, str(weights), strict=True)
        except Exception as err:  # truncated, garbled, or written for another architecture
            warnings.warn(f"cached model {folder.name} cannot be used ({type(err).__name__}: {err}); "
                          "training it again", RuntimeWarning, stacklevel=2)
            model = _build(build_fn)  # the failed load may have filled part of the weights
        else:
            if device is not None:
                model.to(device)
            history = _decode_result(saved.get("history"))
            train_seconds = float(saved.get("train_seconds", 0.0))
            log.info("loaded %s from the cache (training it took %.1f s)", folder.name, train_seconds)
            return model, {"cached": True, "path": str(weights), "history": history,
                           "seconds": time.perf_counter() - started, "train_seconds": train_seconds}

    train_started = time.perf_counter()
    result = train_fn(model)
    train_seconds = time.perf_counter() - train_started
    encoded = _encode_result(result)

    if dist_utils.is_main_process():  # every process holds the same weights; one writes them
        atomic_save(lambda tmp: save_model(model, tmp, metadata={"name": name, "digest": digest}), weights)
        info_json = {"name": name, "digest": digest, "key": key, "code_version": code_version(modules),
                     "modules": modules, "train_seconds": train_seconds, "history": encoded,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_bytes(meta, json.dumps(info_json, indent=1).encode())
        log.info("trained %s in %.1f s; cached as %s", name, train_seconds, folder.name)
    dist_utils.barrier()
    if device is not None:
        model.to(device)
    return model, {"cached": False, "path": str(weights), "history": _decode_result(encoded),
                   "seconds": time.perf_counter() - started, "train_seconds": train_seconds}


__all__ = ["load_or_train", "cache_key", "code_version", "source_modules"]
