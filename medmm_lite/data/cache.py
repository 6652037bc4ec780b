"""A small, safe disk cache for generated arrays (cohorts, MRI phantoms).

One ``.npz`` file per entry holds the arrays, a JSON document (strings: reports,
boxes, names) stored as UTF-8 bytes, and a SHA-256 checksum over all of them.
Why this much care for a cache:

* written atomically (``utils.atomic_save``): a crash leaves the old file or the
  new one, never half of one;
* loaded with ``allow_pickle=False``: a cache file can never run code;
* verified on load: a truncated file or a flipped byte (bad disk, an interrupted
  copy) is *detected*, reported with ``warnings.warn`` and regenerated, instead
  of crashing a lesson or, worse, silently feeding it wrong data.
"""
from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from ..utils import atomic_save, cache_dir


# The modules whose code decides what the generators draw. Their source is part of every
# cache key, so an edit to the generator can never be served a cohort drawn by the old code
# (a version constant alone relies on someone remembering to bump it).
_GENERATOR_MODULES = ("synthcxr.py", "reports.py", "clinical.py", "cohort.py", "mri.py", "findings.py")


@functools.lru_cache(maxsize=1)
def generator_source_hash() -> str:
    h = hashlib.sha256()
    for name in _GENERATOR_MODULES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def cache_key(kind: str, version: int, **arguments) -> str:
    """A short stable hash of everything that determines the generated data."""
    text = json.dumps({"kind": kind, "version": version, "source": generator_source_hash(), **arguments},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(kind: str, stem: str, key: str) -> Path:
    return cache_dir(kind) / f"{stem}_{key}.npz"


def _checksum(arrays: dict, meta_bytes: bytes) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(meta_bytes)
    return h.hexdigest()


def save(path: Path, arrays: dict, meta: dict) -> None:
    """Store numeric arrays and a JSON-able `meta` dict in one checksummed .npz, atomically.
    A cache that cannot be written (read-only or full disk) is only a warning: the data
    itself is fine, it will just be generated again next time."""
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    payload = dict(arrays)
    payload["_meta_json"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    payload["_checksum"] = np.frombuffer(_checksum(arrays, meta_bytes).encode("ascii"), dtype=np.uint8)

    def write(tmp):
        with open(tmp, "wb") as f:          # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **payload)

    try:
        atomic_save(write, path)
    except OSError as err:
        warnings.warn(f"could not write the cache file {path} ({err}); continuing without caching",
                      RuntimeWarning, stacklevel=3)


def load(path: Path):
    """``(arrays, meta)`` from a cache file, or ``None`` when there is none. A damaged file
    (unreadable, truncated, checksum mismatch) warns, is deleted and returns ``None``, so the
    caller regenerates."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        meta_bytes = arrays.pop("_meta_json").tobytes()
        stored = arrays.pop("_checksum").tobytes().decode("ascii")
        if stored != _checksum(arrays, meta_bytes):
            raise ValueError("checksum mismatch")
        meta = json.loads(meta_bytes.decode("utf-8"))
    except Exception as err:               # any damage at all: never crash, never trust it
        warnings.warn(f"cache file {path} is damaged ({type(err).__name__}: {err}); deleting it and "
                      "regenerating the data", RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return arrays, meta
