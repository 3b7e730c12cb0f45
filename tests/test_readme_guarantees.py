"""The README's Guarantees table names tests that exist: a renamed or deleted test breaks this."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# `test_file.py::test_name[params]`, `::test_name` (same file as the previous one), `test_file.py`
REFERENCE = re.compile(r"`((?:test_\w+\.py)?::[\w\[\]*,.|-]+|test_\w+\.py)`")


def guarantee_rows() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Guarantees", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_every_test_the_guarantees_table_names_exists() -> None:
    rows = guarantee_rows()
    assert len(rows) > 20
    missing = []
    for row in rows:
        references = REFERENCE.findall(row)
        assert references, f"a guarantee without a test: {row[:100]}"
        current = None
        for reference in references:
            file, _, name = reference.partition("::")
            current = file or current
            assert current is not None, f"'::{name}' with no file before it: {row[:100]}"
            path = REPO_ROOT / "tests" / current
            if not path.is_file():
                missing.append(current)
                continue
            name = re.sub(r"\[.*\]$", "", name)
            if name and not re.search(rf"^(async )?def {re.escape(name)}\(", path.read_text(encoding="utf-8"), re.M):
                missing.append(f"{current}::{name}")
    assert missing == []
