"""Writes that either complete or leave nothing: stage into a sibling path, then rename.

A staging path (``<target>.partial-*``) is flock'ed by its writer while it exists, so a writer
killed mid-write (SIGKILL, power loss) leaves a staging path nobody holds: the next write of
the same target deletes those (``clear_dead_staging``), and never one whose writer is alive.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textclf.errors import TextclfError
from textclf.locks import fcntl, is_locked_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(TextclfError):
    pass


@contextmanager
def _disk_full_is_an_error(target: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``target`` becomes one TextclfError naming it
    (the outermost target, when a staged file is written inside a staged directory)."""
    try:
        yield
    except (OSError, DiskFull) as error:
        cause = error.__cause__ if isinstance(error, DiskFull) else error
        if not isinstance(cause, OSError) or cause.errno not in DISK_FULL:
            raise
        raise DiskFull(
            f"cannot write {target}: {os.strerror(cause.errno)} (nothing was written; free space and rerun)"
        ) from cause


def _hold(path: Path) -> int | None:
    """An fd holding the flock of ``path`` (a file or directory), None if ``path`` is no
    longer the one created (a clean-up took it for debris in the moment before it was locked)
    or cannot be locked here (no flock: nothing is ever cleared either)."""
    if fcntl is None:  # pragma: no cover - Windows
        return -1
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)  # at most a clean-up's moment
    if is_locked_file(fd, path):
        return fd
    os.close(fd)
    return None


def _release(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def clear_dead_staging(target: str | Path) -> list[Path]:
    """Deletes ``<target>.partial-*`` siblings whose writer is gone (their flock is free);
    returns what was deleted. A writer that is alive, on this host or another sharing the
    filesystem, holds its lock, so its files are never touched."""
    target = Path(target)
    if fcntl is None:  # pragma: no cover - Windows
        return []
    prefix = f"{target.name}.partial-"
    try:
        names = sorted(name for name in os.listdir(target.parent) if name.startswith(prefix))
    except OSError:
        return []
    cleared = []
    for name in names:
        path = target.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile (renamed into place), or not ours (a symlink)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            if not is_locked_file(fd, path):
                continue
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            cleared.append(path)
        finally:
            os.close(fd)
    return cleared


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yields an empty sibling directory that replaces ``target`` only if the block succeeds.

    On any exception the staging directory is removed and ``target`` is left as it was;
    what a killed writer of ``target`` left is removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_staging(target)
    hold = None
    while hold is None:
        with _disk_full_is_an_error(target):
            staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        hold = _hold(staging)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
    try:
        with _disk_full_is_an_error(target):
            yield staging
            replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        _release(hold)


def replace_dir(source: str | Path, target: str | Path) -> None:
    """Moves directory ``source`` onto ``target`` (same filesystem), replacing what was there.

    The old ``target`` is renamed aside first and deleted only once ``source`` is in its
    place; if that second rename fails, the old one is put back. So ``target`` is always one
    complete directory, the old or the new, never a mix or a half-deleted tree.
    """
    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    # An empty directory to rename onto (POSIX allows it); "*.partial-*" is gitignored. The
    # old directory is locked before it moves aside, so no clean-up takes it for debris.
    hold = _hold(target) if target.is_dir() else -1
    try:
        aside = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-old-", dir=target.parent))
        os.replace(target, aside)
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        _release(-1 if hold is None else hold)


@contextmanager
def staged_file(target: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Opens a sibling temporary file that is renamed onto ``target`` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_staging(target)
    hold = None
    while hold is None:
        with _disk_full_is_an_error(target):
            fd, staging = tempfile.mkstemp(prefix=f"{target.name}.partial-", dir=target.parent)
        hold = _hold(Path(staging))  # its own fd: the lock outlives closing the file, to the rename
        if hold is None:
            os.close(fd)
    os.chmod(staging, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
    try:
        with _disk_full_is_an_error(target):
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
                yield handle
            os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
        _release(hold)


def write_json(target: str | Path, data: Any) -> None:
    with staged_file(target, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_text(target: str | Path, text: str) -> None:
    with staged_file(target, "w") as handle:
        handle.write(text)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """``target`` becomes a hard link to ``source`` (no bytes copied), or a copy where links
    are impossible (another filesystem, no link support). For files that are written once and
    replaced, never modified in place: a checkpoint of tens of MB costs a copy per place it goes."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_files(files: dict[Path, bytes]) -> None:
    """Writes several files as one: each into a sibling temporary file first, then all are
    renamed into place. A failure while writing (a full disk) leaves every target as it was
    and no temporary file behind; the renames allocate nothing."""
    staged: list[tuple[str, Path]] = []
    try:
        for target, data in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            with _disk_full_is_an_error(target):
                fd, staging = tempfile.mkstemp(prefix=f"{target.name}.partial-", dir=target.parent)
                staged.append((staging, target))
                with os.fdopen(fd, "wb") as handle:
                    os.chmod(staging, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
                    handle.write(data)
        for staging, target in staged:
            os.replace(staging, target)
    finally:
        for staging, _ in staged:
            if os.path.exists(staging):
                os.unlink(staging)
