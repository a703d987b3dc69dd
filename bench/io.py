"""Atomic writes: a reader never sees a half-written result, and an interrupted run leaves no debris
that a rerun would mistake for a finished stage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def _owner_tag() -> str:
    # Whose temporary this is (host and pid), so a later run can tell a killed writer's debris from a
    # write in progress: `remove_debris`.
    return f"{_host()}~{os.getpid()}~"


DEBRIS = re.compile(r"^\..+\.(?P<host>[^.~/]+)~(?P<pid>\d+)~[^/]*\.tmp$")


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should read like any file the user writes
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a published folder should read like any other
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():  # some writers (safetensors) create private files; published ones read like any other
                f.chmod(0o666 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_debris(root: Path) -> int:
    """Delete the temporaries that writers on this host left when they were killed (their process is
    gone); a temporary of a live process, or of another host sharing the folder, is left alone. Returns
    how many were removed."""
    host, removed = _host(), 0
    for p in sorted(Path(root).rglob(".*.tmp")):
        m = DEBRIS.match(p.name)
        if not m or m["host"] != host or _alive(int(m["pid"])):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def publish(text: str, out: Path, write: bool) -> None:
    """A benchmark's result: printed, and with `write` also committed as `out` (atomically)."""
    print(text)
    if write:
        atomic_write_text(out, text)
        print(f"written: {out}")


# ------------------------------------------------------------------------------------------- checksums


# Hashes this process has computed or checked, by file identity: path -> (size, mtime_ns, inode, sha256).
# A file whose size, modification time and inode are unchanged since is not hashed again (at SD scale a
# DreamBooth artifact is gigabytes, and a stage is checked by the main process and again by its worker).
_HASHED: dict[str, tuple[int, int, int, str]] = {}
RACY_NS = 2_000_000_000


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _remembered(key: str, ident: tuple[int, int, int]) -> tuple | None:
    """The remembered hash entry of the file at `key`, if the file is still the one that was hashed."""
    known = _HASHED.get(key)
    return known if known is not None and known[:3] == ident else None


def sha256_file(path: Path) -> str:
    path = Path(path)
    key = str(path.resolve())
    ident = _identity(path)
    known = _remembered(key, ident)
    if known is not None:
        return known[3]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    # Remembered only if not rewritten while read and not modified in the last RACY_NS: a same-size rewrite
    # within the file system's timestamp granularity would keep the mtime (git's "racy clean" problem).
    if _identity(path) == ident and ident[1] < time.time_ns() - RACY_NS:
        _HASHED[key] = (*ident, h.hexdigest())
    return h.hexdigest()


WHOLE_FILE_BYTES = 64 << 20  # files up to this size are hashed whole
SAMPLE_BYTES = 4 << 20


def sampled_hash(path: Path) -> str:
    """A file's fingerprint for keys: the sha256 of the whole file up to WHOLE_FILE_BYTES; above that, of
    its size and three SAMPLE_BYTES samples (start, middle, end), so a multi-GB checkpoint is not read
    whole on every run. A retrained or replaced checkpoint changes its samples."""
    path = Path(path)
    size = path.stat().st_size
    if size <= WHOLE_FILE_BYTES:
        return sha256_file(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for start in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
            f.seek(start)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


_WEIGHTS: dict[str, tuple] = {}


def weights_digest(path: Path) -> str:
    """A short digest of a model's files (a diffusers folder or a single checkpoint): each file's path
    relative to `path` and its `sampled_hash`. Remembered while no file's size or mtime changes."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    stamp = tuple((str(f), *_identity(f)) for f in files)
    key = str(path.resolve())
    known = _WEIGHTS.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.sha256()
    for f in files:
        h.update((f.relative_to(path).as_posix() if path.is_dir() else f.name).encode() + b"\0" + sampled_hash(f).encode())
    digest = h.hexdigest()[:16]
    if all(mtime < time.time_ns() - RACY_NS for _, _, mtime, _ in stamp):  # as sha256_file: not a racy write
        _WEIGHTS[key] = (stamp, digest)
    return digest


def known_hashes(paths) -> dict[str, list]:
    """This process's hashes of these files (those still unchanged), to hand to another process."""
    out = {}
    for p in paths:
        key = str(Path(p).resolve())
        try:
            known = _remembered(key, _identity(Path(p)))
        except OSError:
            continue
        if known is not None:
            out[key] = list(known)
    return out


def trust_hashes(entries: dict[str, list]) -> None:
    """Take another process's hashes (`known_hashes`); each is used only while its file is unchanged."""
    for key, (size, mtime_ns, ino, digest) in entries.items():
        _HASHED[key] = (int(size), int(mtime_ns), int(ino), str(digest))


def files_under(*paths: Path) -> list[Path]:
    """The files of these paths: a file itself, every file inside a folder (hidden temporaries excluded)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    return out


def checksums(files: list[Path], root: Path, fresh: bool = False) -> dict[str, dict]:
    """{path relative to `root`: {"sha256", "bytes"}} for these files, so the record survives a move of `root`.
    `fresh`: the files were just written atomically by this process (new inodes, nobody else's edits), so
    their hashes are remembered at once and the stage record that lists them does not read them again."""
    out = {f.relative_to(root).as_posix(): {"sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files}
    if fresh:
        for f in files:
            _HASHED[str(Path(f).resolve())] = (*_identity(Path(f)), out[Path(f).relative_to(root).as_posix()]["sha256"])
    return out


# Every stored output is verified through one record format, a manifest: the checksums of the files it
# covers (paths relative to the manifest's root, so a folder can move) and whatever its writer keeps beside
# them. Stage records (rows/<stage>.outputs.json), a sweep's images.json, the class-image cache and the
# report's stamp are all manifests; `manifest_problems` is the one check.
MANIFEST_FORMAT = "adapterbench-manifest/1"


def write_manifest(path: Path, files: list[Path], root: Path, fresh: bool = False, known: dict[str, dict] | None = None, **extra) -> dict:
    """Write the manifest of `files` (under `root`) atomically, with `extra` entries beside the checksums;
    `known`: checksums already computed for some of them (a rows file hashed from its bytes). Returns it."""
    files_record = {**checksums([f for f in files if f.relative_to(root).as_posix() not in (known or {})], root, fresh), **(known or {})}
    doc = {"format": MANIFEST_FORMAT, **extra, "files": dict(sorted(files_record.items()))}
    atomic_write_text(path, json.dumps(doc, indent=1))
    return doc


def read_manifest(path: Path) -> dict:
    """A manifest as written (`format`, `files`, extras). Older results dirs kept the checksums flat, or
    under "checksums": read as the same thing, so their finished stages stay reusable."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a manifest")
    if "files" not in data:
        legacy = data.get("checksums", None if "images" in data or "rows" in data else data)
        data = {**{k: v for k, v in data.items() if k != "checksums"}, "files": legacy if legacy is not None else {}}
    if not isinstance(data["files"], dict):
        raise ValueError(f"{path}: 'files' is not a mapping")
    return data


def manifest_problems(path: Path, root: Path) -> list[str]:
    """What no longer matches the manifest at `path` (files under `root`): one phrase per missing or changed
    file; an unreadable manifest is one problem. Empty: everything it covers is as written. Pure: nothing is
    deleted or rewritten here (`records.discard_stage` does that, explicitly)."""
    try:
        return damage(read_manifest(path)["files"], root)
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return [f"{Path(path).name} is unreadable"]


def damage(recorded: dict[str, dict], root: Path) -> list[str]:
    """What no longer matches a `checksums` record under `root`: one phrase per file, empty when all match."""
    out = []
    for rel, want in recorded.items():
        f = Path(root) / rel
        if not f.is_file():
            out.append(f"{rel} is missing")
        elif f.stat().st_size != want["bytes"] or sha256_file(f) != want["sha256"]:
            out.append(f"{rel} is corrupt (its checksum changed)")
    return out


def folder_error(folder: Path, key: str, target: Path, verb: str) -> str | None:
    """Why `target` cannot be `verb` ('made', 'written') in or as `folder`, found before any work: the
    nearest folder above it that exists is a file or not writable (None: it can be)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{key}: {existing} is a file, so {target} cannot be {verb}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}: {existing} is not writable, so {target} cannot be {verb}"
    return None


class DiskFullError(OSError):
    """A write failed for space (disk full, quota, file-size limit): the run stops in one line; every
    finished stage is kept, so freeing space and rerunning resumes."""


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_SPACE_TEXT = ("No space left on device", "File too large", "Disk quota exceeded")


def no_space(error: BaseException) -> DiskFullError | None:
    """The DiskFullError behind `error` (itself, its cause or context: safetensors and torch wrap the OS
    error in their own types), or None when it is not about space."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return error
        said = [t for t in _NO_SPACE_TEXT if t in str(error)]
        if (isinstance(error, OSError) and error.errno in _NO_SPACE) or said:
            where = getattr(error, "filename", None)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else said[0]
            return DiskFullError(f"no space to write {where or 'the results'} ({reason}); free space (or raise the file-size limit) and run the same command again: every finished stage is kept")
        error = error.__cause__ or error.__context__
    return None
