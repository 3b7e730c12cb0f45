"""Stage 1: fetch the corpus archive from data.url (then data.mirrors), verify data.sha256;
or take a local copy of it from $TEXTCLF_DATA_HOME (see textclf.data.home).

At most data.max_download_bytes per URL; credentials from ~/.netrc or the environment (see
textclf.data.download)."""

from __future__ import annotations

import argparse
from pathlib import Path

from textclf.config import DataConfig, load_params
from textclf.data.download import BACKOFF_SECONDS, RETRIES, TIMEOUT_SECONDS
from textclf.data.download import download as fetch_first
from textclf.data.home import data_home, local_copy, offline_hint, take_local_copy
from textclf.errors import run_cli
from textclf.resume import sweep_abandoned


def download(
    cfg: DataConfig,
    raw_dir: Path,
    progress: bool = True,
    retries: int = RETRIES,
    backoff: float = BACKOFF_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
) -> Path:
    """Writes ``raw_dir/<data.archive_name>``; returns its path. Nothing is left on failure.

    A copy of the pinned corpus in $TEXTCLF_DATA_HOME is taken first (textclf.data.home); else
    each URL is retried ``retries`` times on transient faults (backoff ``backoff``, ``2 *
    backoff``, ...; ``timeout`` seconds per connect or read), then the mirrors are tried."""
    target, home = raw_dir / cfg.archive_name, data_home()
    local = local_copy(cfg, home)
    if local is not None:
        how = take_local_copy(cfg, local, target)
        if progress:
            print(f"download: {target} from {local} ({how})")
        return target
    return fetch_first(
        [cfg.url, *cfg.mirrors],
        target,
        cfg.sha256,
        progress,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        max_bytes=cfg.max_download_bytes,
        hint=offline_hint(cfg, home),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params, check_targets=False)  # builds no model: see config.validate
        sweep_abandoned(cfg)  # runs of trainings that died: KILLED (see textclf.resume)
        path = download(cfg.data, cfg.paths.raw)
        if local_copy(cfg.data, data_home()) is None:  # a local copy says what it took itself
            print(f"download: {path} (sha256 {cfg.data.sha256})")

    run_cli("download", stage)


if __name__ == "__main__":
    main()
