"""Downloads that survive bad networks: resumable, checksummed, never repeated needlessly.

Real datasets are large (IU X-ray's images are over a gigabyte, IXI's tarballs several
gigabytes each) and come from servers that sometimes drop connections. So:

* **Resumable.** Bytes go to ``NAME.part``; when a connection drops, the next attempt asks
  for the rest with an HTTP ``Range: bytes=N-`` header. A server that ignores Range answers
  200 with the whole file, and we start that file over (never append a second copy).
* **Checksummed.** Where the source publishes a checksum (MedMNIST's MD5s) the file must
  match it. Where it does not, the first complete download's size and SHA-256 are recorded
  in ``CHECKSUMS.json`` beside the file ("trust on first use"), and every later run checks
  the file against that record. A file that fails its check is deleted and fetched again,
  and the new download must match the record too: a source that now serves other bytes is
  a :class:`ChecksumError` that says what changed, never a silently replaced record. Accept
  a changed upstream file deliberately with ``accept_new_checksum=True`` (the prepare
  scripts' ``--accept-new-checksum``).
* **One download at a time.** Two processes fetching the same file take turns (a file lock
  beside it); the second finds the first one's verified file instead of writing into the
  same ``.part``.
* **Detected truncation.** A response shorter than its ``Content-Length`` is an incomplete
  download, not a finished one: it stays a ``.part`` and is resumed.
* **Never re-downloaded when valid.** A present file that passes its check is used as is.
* **Only the standard library** (``urllib``), so it works wherever Python does; the opener
  is a parameter, which is how the tests serve bytes from a local server.

Public: :class:`RemoteFile`, :func:`fetch`, :func:`verify`, :func:`file_digests`,
:class:`DownloadError`, :class:`ChecksumError`.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ...utils import atomic_write_bytes, file_lock

CHUNK = 1 << 20                      # 1 MiB per read: progress updates often, memory stays small
RECORD_NAME = "CHECKSUMS.json"
USER_AGENT = "medmm-course-data/1.0 (+https://github.com/medmm-course/medmm-course)"
UNVERIFIED = "no checksum to verify against yet"
SYNTHETIC_HINT = ('Offline, or just trying the course? Keep DATASET = "synthcxr": the synthetic '
                  "cohort every lesson runs on, no download needed.")


class DownloadError(OSError):
    """A file could not be fetched (network unreachable, HTTP error, repeated truncation)."""


class ChecksumError(DownloadError):
    """A downloaded file is not the file the source published (or the one first recorded)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch. ``md5`` / ``sha256`` are the checksums the *source* publishes; leave
    them None when it publishes none, and the first download is recorded instead. ``validate``
    is an optional structural check (e.g. "opens as a zip") run on the finished file."""
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    validate: Callable[[Path], None] | None = None

    @property
    def published(self) -> bool:
        return bool(self.md5 or self.sha256)


# ----------------------------------------------------------------------------------------------
# checksums
# ----------------------------------------------------------------------------------------------

def file_digests(path: str | os.PathLike, algorithms=("md5", "sha256"), progress: bool = False) -> dict:
    """Hex digests of a file, read once in chunks (a 4 GB tarball never sits in memory)."""
    path = Path(path)
    hashers = {name: hashlib.new(name) for name in algorithms}
    bar = _progress_bar(path.stat().st_size, 0, f"checking {path.name}", progress)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            bar.update(len(chunk))
    bar.close()
    return {name: h.hexdigest() for name, h in hashers.items()}


def _read_records(directory: Path) -> dict:
    path = directory / RECORD_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}                    # a damaged record is no record: files get re-checked and re-recorded


def _write_record(directory: Path, filename: str, entry: dict) -> None:
    records = _read_records(directory)
    records[filename] = entry
    atomic_write_bytes(directory / RECORD_NAME, (json.dumps(records, indent=2, sort_keys=True) + "\n").encode())


def verify(path: str | os.PathLike, remote: RemoteFile, progress: bool = False) -> tuple[bool, str]:
    """Is the file at ``path`` the file ``remote`` describes? Returns ``(ok, why)``.

    Checks, in order: that it exists; its size (published or recorded); the published MD5 /
    SHA-256, else the digests recorded on first download. A file with neither a published nor
    a recorded checksum is "unverified": ``(False, "no checksum to verify against yet")``.
    """
    path = Path(path)
    if not path.is_file():
        return False, "missing"
    size = path.stat().st_size
    record = _read_records(path.parent).get(remote.filename)
    expected_size = remote.size if remote.size is not None else (record or {}).get("size")
    if expected_size is not None and size != expected_size:
        return False, f"size {size:,} bytes, expected {expected_size:,} (truncated or altered)"
    if remote.published or record:
        digests = file_digests(path, progress=progress)
        for name in ("md5", "sha256"):
            want = getattr(remote, name) or (None if remote.published else (record or {}).get(name))
            if want and digests[name] != want.lower():
                source = "published by the source" if remote.published else f"recorded in {RECORD_NAME}"
                return False, f"{name.upper()} {digests[name]} does not match {want} ({source})"
    else:
        return False, UNVERIFIED
    # The structural ``validate`` check is not repeated here: a file that matches a published
    # checksum, or the record made when it first passed that check, is that same file.
    return True, "ok"


# ----------------------------------------------------------------------------------------------
# fetching
# ----------------------------------------------------------------------------------------------

def fetch(remote: RemoteFile, directory: str | os.PathLike, *, dataset: str, progress: bool = True,
          opener: urllib.request.OpenerDirector | None = None, retries: int = 4, timeout: float = 60.0,
          backoff: float = 2.0, log: Callable[[str], None] = print, accept_new_checksum: bool = False) -> Path:
    """Make ``directory / remote.filename`` a verified copy of ``remote`` and return its path.

    A valid file already there is returned without touching the network. Otherwise the file is
    downloaded (resuming a ``.part`` left by an earlier attempt), verified, and moved into
    place; the record of its size and SHA-256 is written for sources that publish no checksum.
    A checksum failure discards the bytes and downloads once more from scratch before giving up
    with :class:`ChecksumError`. ``dataset`` names the dataset in error messages.

    For a source without a published checksum, a new download must match the size and SHA-256
    recorded for the first one; if the source now serves another file, that is a
    :class:`ChecksumError` naming both, and the new bytes stay in ``NAME.part``.
    ``accept_new_checksum=True`` accepts them (and records them) deliberately.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / f".{remote.filename}.lock", f"downloading {remote.filename}",
                   log=lambda message: log(f"[{dataset}] {message}")):
        return _fetch(remote, directory, dataset=dataset, progress=progress, opener=opener, retries=retries,
                      timeout=timeout, backoff=backoff, log=log, accept_new_checksum=accept_new_checksum)


def _fetch(remote: RemoteFile, directory: Path, *, dataset, progress, opener, retries, timeout, backoff, log,
           accept_new_checksum) -> Path:
    final = directory / remote.filename
    part = final.with_name(final.name + ".part")

    if final.exists():
        ok, why = verify(final, remote, progress=progress)
        if why == UNVERIFIED:
            # Put there by hand (or by an older version) and never recorded: nothing to compare it
            # with, so accept it if it passes the structural check, and record it from now on.
            ok, why = _validate_only(final, remote) if remote.validate else (True, "ok")
            if ok:
                _record(final, remote, source="recorded for a file found on disk (not downloaded by us)")
                log(f"[{dataset}] {final.name}: found on disk; recorded its size and SHA-256 for later checks")
        if ok:
            return final
        log(f"[{dataset}] {final.name}: {why}; fetching it again")
        final.unlink()

    record = None if remote.published else _read_records(directory).get(remote.filename)
    if record is not None and accept_new_checksum:
        log(f"[{dataset}] {remote.filename}: accepting whatever the source serves now (--accept-new-checksum); "
            f"the record of {record.get('recorded_at', 'an earlier download')} will be replaced")
        record = None
    opener = opener or urllib.request.build_opener()
    for attempt_from_scratch in (False, True):
        _download(remote, part, dataset=dataset, opener=opener, retries=retries, timeout=timeout,
                  backoff=backoff, progress=progress, log=log)
        ok, why = _check_new_download(part, remote)
        changed = None
        if ok and record is not None:
            changed = _differs_from_record(part, record)
            ok = changed is None
            why = why if ok else changed
        if ok:
            os.replace(part, final)
            if not remote.published:
                source = ("recorded on first download (the source publishes no checksum)" if not accept_new_checksum
                          else "accepted deliberately (--accept-new-checksum) after the source changed the file")
                _record(final, remote, source=source)
            return final
        if changed is not None and attempt_from_scratch:
            break                      # keep the .part: --accept-new-checksum uses it without downloading again
        part.unlink(missing_ok=True)
        if not attempt_from_scratch:
            log(f"[{dataset}] {remote.filename}: {why}; discarding it and downloading again from scratch")
    if changed is not None:
        raise ChecksumError(
            f"{dataset}: {remote.filename} from {remote.url} is not the file recorded in "
            f"{directory.name}/{RECORD_NAME} (twice, so it is not a broken transfer): {changed}. The source "
            "publishes no checksum, so this cannot tell an updated release from a damaged or altered file. If "
            "you trust that the source updated it, accept the new file deliberately: run the prepare script again "
            "with --accept-new-checksum (or download_and_prepare(..., accept_new_checksum=True)); the new bytes are "
            f"kept as {part.name} and recorded then. Otherwise try again later or from another network (or a "
            f"--mirror). {SYNTHETIC_HINT}")
    raise ChecksumError(
        f"{dataset}: {remote.filename} downloaded from {remote.url} twice and failed its check both times: {why}. "
        "The source may have changed the file, or a proxy may be altering it. Try again later or from another "
        f"network (or pass a mirror with --mirror). {SYNTHETIC_HINT}")


def _differs_from_record(path: Path, record: dict) -> str | None:
    """How the file at ``path`` differs from ``record`` (size, SHA-256), or None if it does not."""
    size = path.stat().st_size
    when = record.get("recorded_at", "an earlier download")
    if record.get("size") is not None and size != record["size"]:
        return (f"it is {size:,} bytes now, {record['size']:,} bytes when first downloaded ({when}, SHA-256 "
                f"{str(record.get('sha256'))[:16]}...)")
    sha = file_digests(path, ("sha256",))["sha256"]
    if record.get("sha256") and sha != record["sha256"]:
        return (f"its SHA-256 is {sha[:16]}... now, {record['sha256'][:16]}... when first downloaded ({when}; "
                f"same size, {size:,} bytes)")
    return None


def _validate_only(path: Path, remote: RemoteFile) -> tuple[bool, str]:
    try:
        remote.validate(path)
    except Exception as err:          # noqa: BLE001
        return False, f"not a valid file ({type(err).__name__}: {err})"
    return True, "ok"


def _check_new_download(part: Path, remote: RemoteFile) -> tuple[bool, str]:
    """Check a finished ``.part``: against published checksums, else only its structure (a fresh
    download of an unpublished file has nothing to compare with; we record it afterwards)."""
    if remote.published or remote.size is not None:
        ok, why = verify(part, RemoteFile(remote.url, part.name, remote.md5, remote.sha256, remote.size))
        if not ok:
            return ok, why
    if remote.validate is not None:
        return _validate_only(part, remote)
    return True, "ok"


def _record(final: Path, remote: RemoteFile, source: str) -> None:
    digests = file_digests(final)
    _write_record(final.parent, remote.filename, {
        "url": remote.url, "size": final.stat().st_size, "sha256": digests["sha256"], "md5": digests["md5"],
        "source": source, "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _download(remote: RemoteFile, part: Path, *, dataset: str, opener, retries: int, timeout: float,
              backoff: float, progress: bool, log) -> None:
    """Fill ``part`` with the whole file, resuming across dropped connections."""
    last_error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * attempt)
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(remote.url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:
                # "Range not satisfiable": we asked for bytes at or past the end. If the server
                # says the file is exactly as long as our .part, the .part is whole (the checks
                # that follow decide whether it is right); otherwise start the file over.
                total = (err.headers.get("Content-Range") or "").rpartition("/")[2]
                if not total.isdigit() or int(total) == have:
                    return
                part.unlink(missing_ok=True)
                last_error = err
                continue
            last_error = err
            if 400 <= err.code < 500 and err.code not in (408, 429):
                break                 # not found / forbidden: retrying will not help
            continue
        except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
            last_error = err
            continue
        with response:
            status = getattr(response, "status", None) or response.getcode()
            if have and status == 206 and not _range_starts_at(response, have):
                have, status = 0, 200                           # an odd partial answer: start over
                response.close()
                part.unlink(missing_ok=True)
                last_error = DownloadError("server sent a partial response that does not continue our file")
                continue
            if status != 206:
                have = 0                                        # the whole file: overwrite, never append
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = _progress_bar(total, have, f"{dataset}: {remote.filename}", progress)
            written = have
            try:
                with open(part, "ab" if have else "wb") as f:
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            except (socket.timeout, ConnectionError, http.client.HTTPException, urllib.error.URLError) as err:
                last_error = err
                continue
            finally:
                bar.close()
            if total is not None and written < total:
                last_error = DownloadError(f"connection closed after {written:,} of {total:,} bytes")
                log(f"[{dataset}] {remote.filename}: {last_error}; resuming")
                continue
            return
    raise DownloadError(
        f"{dataset}: could not download {remote.url} ({type(last_error).__name__}: {last_error}). Check the "
        "network (the course's real datasets need internet access once; afterwards they are read from disk), "
        f"then run the same command again: it resumes where it stopped. {SYNTHETIC_HINT}") from last_error


def _range_starts_at(response, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")        # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total, initial, description, enabled):
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                leave=False)
