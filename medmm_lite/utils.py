"""Seeding, device choice, cache locations, atomic writes and file locks."""
from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run repeats exactly on one machine."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if prefer is not None:
        if prefer == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; use 'cpu'")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir(kind: str = "") -> Path:
    """Where cohorts, tokenizers and models are cached: ``$MEDMM_DATA`` or ``~/.cache/medmm``."""
    root = Path(os.environ.get("MEDMM_DATA") or Path.home() / ".cache" / "medmm")
    path = root / kind if kind else root
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# atomic writes: a crash leaves the old file or the new one; a full disk says so
# ----------------------------------------------------------------------------------------------

STALE_SECONDS = 3600          # a temporary file of another machine (or an older version) this old is dead
# this machine, as temporary files name it (beside the process id), so a later run can tell whose they are
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


class NoSpaceLeftError(OSError):
    """A save failed because the disk (or the user's quota) is full. ``directory``,
    ``needed_bytes`` (an estimate, 0 if unknown) and ``free_bytes`` say where and how much."""

    def __init__(self, directory: Path, needed_bytes: int, free_bytes: int):
        self.directory, self.needed_bytes, self.free_bytes = Path(directory), int(needed_bytes), int(free_bytes)
        super().__init__(f"no space left on {self.directory} ({self.describe_need()}); free some space there, "
                         "or write somewhere else, and run again")
        self.errno = errno.ENOSPC

    def describe_need(self) -> str:
        free = f"{self.free_bytes / 2**20:.0f} MB free"
        if self.needed_bytes <= 0:
            return f"more than the {free} was needed"
        return f"needed ~{max(1, round(self.needed_bytes / 2**20))} MB, {free}"

    def __str__(self) -> str:
        return self.args[0]


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_file(path: Path) -> str:
    """An empty ``NAME.HOST-PID.RANDOM.tmp`` beside ``path``, readable as an ordinary new file
    would be (0644 with the usual umask 022; ``mkstemp`` alone makes it 0600, so a cache built
    for a workshop could not be read by another account)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{HOST}-{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return tmp


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:               # another user's process: alive
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``NAME.*.tmp`` files beside ``path`` that a killed save left behind: those of a
    dead process of this machine, and those of another machine or an older version untouched for
    an hour. A live save's temporary file (another process writing the same path) is left alone."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.(?:(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        m = pattern.fullmatch(candidate.name)
        if m is None:
            continue
        try:
            if m.group("pid") is not None and m.group("host") == HOST:
                stale = int(m.group("pid")) != os.getpid() and not pid_alive(int(m.group("pid")))
            else:
                stale = time.time() - candidate.stat().st_mtime > STALE_SECONDS
            if stale:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass
    return removed


def _disk_full(err: BaseException, directory: Path) -> bool:
    """Did ``err`` come from a full disk? ENOSPC / EDQUOT anywhere in its chain, or torch's
    writer failing ("unexpected pos", "file write failed") with (next to) nothing free."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if isinstance(err, RuntimeError) and any(s in text for s in ("unexpected pos", "file write failed",
                                                                  "PytorchStreamWriter failed")):
        try:
            return shutil.disk_usage(directory).free < 2**20
        except OSError:
            return False
    return False


def atomic_save(save_fn, path: str | os.PathLike, needed_bytes: int | None = None) -> None:
    """Call ``save_fn(tmp_path)`` then move the result into place atomically.

    A crash leaves the old file or the new one, never half of one; the temporary files a killed
    save left behind are removed by the next save of the same path. On a full disk the error is
    a :class:`NoSpaceLeftError` ("no space left on DIR (needed ~N MB)"), whatever the writer
    said (torch's is "enforce fail at inline_container.cc:672 unexpected pos"). ``needed_bytes``
    is the expected size, for that message (default: the size of the file being replaced, or
    what was written before the disk filled).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary_file(path)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and _disk_full(err, path.parent)
        if full:
            written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
            previous = path.stat().st_size if path.exists() else 0
            needed = needed_bytes or max(previous, written)
        Path(tmp).unlink(missing_ok=True)
        if full:
            try:
                free = shutil.disk_usage(path.parent).free
            except OSError:
                free = 0
            raise NoSpaceLeftError(path.parent, needed, free) from err
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that a crash leaves either the old file or the new one, never half of one."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_save(write, path, needed_bytes=len(data))


# ----------------------------------------------------------------------------------------------
# one process at a time
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def file_lock(path: str | os.PathLike, doing: str, log=None):
    """Hold an exclusive lock (the ``filelock`` package) on ``path`` for the block, so that two
    processes doing the same thing (preparing one dataset, training one cached model) take
    turns: the second waits, then finds the first one's result.

    ``doing`` describes the work ("preparing iu_xray") for the message ``log`` gets when it has
    to wait. Where the lock file cannot be created (a read-only cache shared by a workshop),
    the block runs without a lock: nothing can be written there anyway.
    """
    path = Path(path)
    lock = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = FileLock(str(path))
        try:
            candidate.acquire(timeout=0)
        except Timeout:
            if log is not None:
                log(f"another process is {doing}; waiting for it to finish (lock file {path.name})")
            candidate.acquire()
        lock = candidate
    except OSError as err:
        if log is not None:
            log(f"cannot lock {path.name} ({type(err).__name__}: {err}); {doing} without a lock")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
