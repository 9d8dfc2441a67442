"""The one atomic writer: files and folders that a crash leaves either old or new, never half.

A **file** is written to a temporary sibling (``.<name>.<random>.tmp``), fsync'ed and moved
into place with ``os.replace`` (atomic on POSIX), then its folder is fsync'ed.

A **folder** (a model, a tokenizer, a training state, a whole run) is written by
:func:`atomic_folder` / :func:`write_folder`:

1. take the folder's lock (``.<name>.lock`` beside it, :mod:`filelock`): concurrent saves
   to one folder run one after the other instead of failing;
2. remove what earlier killed saves left (``.<name>.tmp-*`` and ``.<name>.old-*``
   siblings; nothing else can be writing them while the lock is held);
3. write every file into a fresh temporary sibling ``.<name>.tmp-<pid>-<hex>``, fsync each
   file and the folder;
4. put it in place with **one** rename: on Linux ``renameat2(RENAME_EXCHANGE)`` swaps the
   new folder and the old one atomically (a reader sees the old folder or the new one,
   never none), then the old one (now at the temporary name) is deleted. Where the
   exchange is not available the old folder is renamed to ``.<name>.previous`` first and
   deleted last; :func:`resolve_folder` (used by every loader) falls back to it if a crash
   falls between the two renames.

A kill at any point leaves the previous folder loadable and at most temporary siblings,
which the next save of that folder removes. The lock file itself stays (deleting a lock
file while another process may wait on it would let two processes hold it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ar_core.errors import CheckpointError

__all__ = [
    "LockedError",
    "atomic_folder",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale",
    "folder_lock",
    "fsync_dir",
    "fsync_tree",
    "lock_path",
    "replace_folder",
    "resolve_folder",
    "write_folder",
]

DEFAULT_LOCK_TIMEOUT = 600.0  # seconds a save waits for another save of the same folder


class LockedError(CheckpointError):
    """A folder is locked by another process (a save or a run in progress)."""


# -- fsync ------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Persist renames inside ``path``: fsync the folder (best effort: not every OS can)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (deepest first), ``root`` included."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(folder) / name
            if not p.is_symlink():
                _fsync_file(p)
        fsync_dir(Path(folder))


# -- files ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    with _atomic_file(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that a crash leaves either the old or the new file."""
    atomic_write_bytes(path, text.encode("utf-8"))


# -- locks ------------------------------------------------------------------------------------

_locks: dict[tuple[int, str], FileLock] = {}  # per process: a forked child makes its own
_locks_guard = threading.Lock()


def lock_path(path: str | Path) -> Path:
    """The lock file of the folder ``path``: ``.<name>.lock`` beside it."""
    p = Path(path).absolute()
    return p.with_name(f".{p.name}.lock")


def folder_lock(path: str | Path) -> FileLock:
    """The process-wide (re-entrant) file lock of the folder ``path``."""
    key = (os.getpid(), str(lock_path(path)))
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = FileLock(key[1])
        return lock


@contextlib.contextmanager
def _locked(path: Path, timeout: float, what: str) -> Iterator[None]:
    lock = folder_lock(path)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise LockedError(
            f"{path} is locked by another process ({what}; lock file {lock_path(path)}); "
            f"wait for it to finish or use another folder"
        ) from None
    try:
        yield
    finally:
        lock.release()


# -- folders ------------------------------------------------------------------------------


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.previous")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2``); False where
    the OS or file system cannot."""
    if sys.platform != "linux" or os.environ.get("AR_NO_RENAME_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def clean_stale(path: Path) -> list[Path]:
    """Remove the temporary siblings killed saves of ``path`` left; call with the lock held.
    ``.<name>.previous`` goes too when ``path`` itself exists (it is then the older one)."""
    removed = []
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            stale = child.name.startswith(prefixes) or (child == _previous(path) and path.is_dir())
            if stale:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed.append(child)
    return removed


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path`` with one rename; delete the old one."""
    if path.is_dir() and not path.is_symlink():
        if _exchange(tmp, path):  # path: new, tmp: old
            fsync_dir(path.parent)
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(tmp, old)  # a kill during the rmtree leaves .old-*, cleaned next time
            shutil.rmtree(old, ignore_errors=True)
            return
        previous = _previous(path)
        if previous.exists():  # stale from an earlier crash; path is complete
            shutil.rmtree(previous)
        os.replace(path, previous)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(previous, ignore_errors=True)
        return
    if path.exists() or path.is_symlink():
        raise CheckpointError(f"cannot write a folder at {path}: a file is in the way")
    # no folder yet: a crash before this rename leaves .previous (if any) as the last good one
    os.replace(tmp, path)
    fsync_dir(path.parent)
    previous = _previous(path)
    if previous.exists():
        shutil.rmtree(previous, ignore_errors=True)


_pending: set[Path] = set()  # temporary folders of atomic_folder blocks still open here


def replace_folder(src: str | Path, dst: str | Path) -> None:
    """Put the complete folder ``src`` (a sibling of ``dst``) at ``dst`` with one rename and
    delete what was there. The caller holds ``folder_lock(dst)`` and has fsync'ed ``src``."""
    src, dst = Path(src).absolute(), Path(dst).absolute()
    fsync_tree(src)
    _swap_in(src, dst)


@contextlib.contextmanager
def atomic_folder(
    path: str | Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without an error, everything in
    it is fsync'ed and it replaces ``path`` in one rename (see the module docstring). An
    error (or a kill) leaves ``path`` as it was."""
    path = Path(path).absolute()
    if any(parent in _pending for parent in path.parents):
        # inside another atomic folder of this process (a tokenizer that saves its base
        # tokenizer into a sub-folder): written directly, it lands with the outer rename
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir(parents=True)
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"cannot write a folder at {path}: a file is in the way")
    with _locked(path, lock_timeout, "a save of the same folder"):
        clean_stale(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        _pending.add(tmp)
        try:
            yield tmp
            fsync_tree(tmp)
            _swap_in(tmp, path)
        finally:
            _pending.discard(tmp)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def write_folder(
    path: str | Path,
    writer: Callable[[Path], object],
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Path:
    """``writer(tmp)`` writes every file of the folder into ``tmp``; then ``path`` becomes
    that folder atomically. Returns ``path``."""
    path = Path(path)
    with atomic_folder(path, lock_timeout=lock_timeout) as tmp:
        writer(tmp)
    return path


def resolve_folder(path: str | Path, *, what: str = "checkpoint") -> Path:
    """``path`` if it is a folder, else the ``.<name>.previous`` copy a crash between the
    two renames of the fallback swap left behind (with a warning)."""
    path = Path(path)
    if path.is_dir():
        return path
    previous = _previous(path.absolute())
    if previous.is_dir():
        warnings.warn(
            f"{what} {path} is missing but {previous} exists (a save was interrupted); "
            f"loading the previous {what}",
            stacklevel=3,
        )
        return previous
    if path.exists():
        raise CheckpointError(f"{path} is a file; a {what} is a folder")
    raise CheckpointError(f"no {what} at {path}: the folder does not exist")
