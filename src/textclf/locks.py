"""Cross-process locks named by a path, that leave no lock file behind.

    with path_lock(Path("x.lock")):                 # waits for another holder
    with path_lock(Path("x.lock"), wait=False) as held:   # held is False: someone else has it

flock(2) on the lock file: the kernel releases it when its holder dies, so a killed process
never leaves a lock held. The holder deletes the file before it unlocks; whoever locks a file
checks afterwards that it is still the file at the path (a waiter may have opened it before
it was deleted) and otherwise starts over. So at most one process holds the lock of a path,
and a lock file exists only while it is held (or after a holder was killed; the next one to
lock the path takes it over and deletes it). Also the test of liveness: a training whose
lock is not held is dead (see textclf.resume).

Without flock (Windows) this is filelock's FileLock, whose file stays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def is_locked_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is open on the very file (or directory) now at ``path``."""
    try:
        at_path = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (opened.st_dev, opened.st_ino)


def _acquire(path: Path, wait: bool, on_wait: Callable[[], None] | None) -> int | None:
    """An fd holding the flock of ``path``'s current file; None when ``wait`` is False and
    another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return None
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            if is_locked_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder deleted it as we waited: lock the path's new file


@contextmanager
def path_lock(path: str | Path, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Holds the lock of ``path`` for the block (True), or with ``wait=False`` yields False at
    once when another process holds it. ``on_wait`` is called once before waiting."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        from filelock import FileLock, Timeout

        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield True
        finally:
            lock.release()
        return
    fd = _acquire(path, wait, on_wait)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        try:
            os.unlink(path)  # while still held: a waiter on this file finds it gone and retries
        except FileNotFoundError:
            pass
        os.close(fd)
