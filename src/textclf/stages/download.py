"""Stage 1: bring the data source's inputs within reach and record what they are.

Remote inputs (a URL, a Hub dataset) are fetched into paths.raw, verified by data.sha256
(a copy of the pinned corpus in $TEXTCLF_DATA_HOME is taken first: see textclf.data.home);
local inputs (a folder, a file) are hashed where they are. ``<raw>/source.json`` records the
content hash, which preprocess copies into the manifest: DVC reruns preprocess when it
changes, and nothing when it does not. Verified downloads are kept in
``<paths.cache>/downloads/<sha256>/``, so a rerun (any data.* param changed) fetches nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textclf.atomic import staged_dir, write_json
from textclf.config import DATA_SECTIONS, Config, load_params
from textclf.data.sources.base import RECORD_FILE, SourceRecord, build_source
from textclf.errors import run_cli
from textclf.resume import sweep_abandoned


def download(cfg: Config, raw_dir: Path, progress: bool = True) -> SourceRecord:
    """Writes ``raw_dir`` (atomically: all of it or, on failure, nothing) and returns the record."""
    source = build_source(cfg, downloads=cfg.paths.cache / "downloads")
    with staged_dir(raw_dir) as staging:
        record = source.fetch(staging, progress)
        write_json(staging / RECORD_FILE, record.to_json())
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)

    def stage() -> None:
        cfg = load_params(args.params, targets=DATA_SECTIONS)  # builds no model: see config.validate
        sweep_abandoned(cfg)  # runs of trainings that died: KILLED (see textclf.resume)
        record = download(cfg, cfg.paths.raw)
        print(f"download: {cfg.data.corpus}: content sha256 {record.content_sha256}")

    run_cli("download", stage)


if __name__ == "__main__":
    main()
