"""What a killed writer leaves is cleared by the next write of the same target, and never what a
live writer is writing; lock files exist only while held."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textclf.atomic import staged_dir, staged_file
from textclf.locks import path_lock

from conftest import subprocess_env

# Stages ``target`` (a directory or a file, by argv[2]), writes into it, then announces that
# and waits to be killed: a writer in the middle of its write.
WRITER = """
import sys, time
from pathlib import Path
from textclf.atomic import staged_dir, staged_file
target = Path(sys.argv[1])
if sys.argv[2] == "dir":
    with staged_dir(target) as staging:
        (staging / "model.ckpt").write_bytes(b"x" * 1000)
        print("staging", flush=True)
        time.sleep(600)
else:
    with staged_file(target) as handle:
        handle.write(b"x" * 1000)
        handle.flush()
        print("staging", flush=True)
        time.sleep(600)
"""


def writer_in_the_middle(target: Path, kind: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), kind], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    assert process.stdout.readline() == "staging\n"
    return process


def partials(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f"{target.name}.partial-*"))


def write(target: Path, kind: str) -> None:
    if kind == "dir":
        with staged_dir(target) as staging:
            (staging / "model.ckpt").write_bytes(b"new")
    else:
        with staged_file(target) as handle:
            handle.write(b"new")


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_the_next_write_clears_what_a_killed_writer_left_and_keeps_a_live_writers(tmp_path: Path, kind: str) -> None:
    target = tmp_path / ("models" if kind == "dir" else "metrics.json")
    live = writer_in_the_middle(target, kind)
    (live_staging,) = partials(target)
    killed = writer_in_the_middle(target, kind)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert len(partials(target)) == 2  # SIGKILL: no clean-up ran

        write(target, kind)
        assert partials(target) == [live_staging]  # the killed writer's staging is gone, the live one's kept
        assert (live_staging / "model.ckpt" if kind == "dir" else live_staging).stat().st_size == 1000
        assert (target / "model.ckpt" if kind == "dir" else target).read_bytes() == b"new"
    finally:
        for process in (live, killed):
            process.kill()
            process.wait()
    write(target, kind)  # its writer is dead now too
    assert partials(target) == []


def test_a_lock_file_exists_only_while_held(tmp_path: Path) -> None:
    lock = tmp_path / "entry.lock"
    with path_lock(lock) as held:
        assert held and lock.exists()
        holder = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from textclf.locks import path_lock\nwith path_lock({str(lock)!r}, wait=False) as held: print(held)",
            ],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            check=True,
        )
        assert holder.stdout.strip() == "False"  # another process sees it held
    assert not lock.exists()

    # A holder killed while holding leaves the file, unlocked: the next one takes it over.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time\nfrom textclf.locks import path_lock\nwith path_lock({str(lock)!r}):\n"
            " print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert holder.stdout.readline() == "held\n"
    with path_lock(lock, wait=False) as held:
        assert not held
    holder.kill()
    holder.wait()
    assert lock.exists()
    started = time.monotonic()
    with path_lock(lock, wait=False) as held:
        assert held
    assert not lock.exists() and time.monotonic() - started < 5
