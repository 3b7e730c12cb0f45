"""data=table: CSV, TSV, JSON Lines and Parquet files read into examples (textclf.data.sources.table).

Every table is made here in tmp_path with pandas; the URL is served from 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path

import pandas as pd
import pytest

from textclf.config import build, validate
from textclf.data.sources.base import Limits, combined_sha256
from textclf.data.sources.table import Table
from textclf.errors import TextclfError
from textclf.params import compose

from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("hf_home")  # offline; a cache written would land in tmp_path

ROWS = pd.DataFrame(
    {
        "title": ["Great", "Awful", "Café", "Meh"],
        "body": ['loved it, "really"', "never\nagain", "", "東京 ok"],
        "stars": [5, 1, 4, 3],
        "part": ["train", "train", "dev", "test"],
    }
)
WRITERS = {
    "csv": lambda frame, path: frame.to_csv(path, index=False),
    "tsv": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True, force_ascii=False),
    "parquet": lambda frame, path: frame.to_parquet(path, index=False),
}


def write(path: Path, frame: pd.DataFrame = ROWS, fmt: str | None = None) -> Path:
    WRITERS[fmt or path.suffix.lstrip(".").lower()](frame, path)
    return path


@functools.cache
def defaults() -> dict:
    """conf/data/table.yaml's own keys, as the data stages build the source from them."""
    return validate(compose(["data=table", "data.train=x.csv"], root=REPO_ROOT), targets=("data",)).data.source_options


def table(train: Path | str, **options) -> Table:
    values = {**defaults(), "train": str(train), "text_column": "body", "label_column": "stars", **options}
    return build("data", values, limits=Limits(), downloads=None)


def examples(source: Table, raw: Path | None = None) -> list[tuple]:
    return [(e.split, e.label, e.text, e.origin.rsplit(" row ", 1)[1]) for e in source.read(raw or Path("unused"))]


@pytest.mark.parametrize("extension", ["csv", "tsv", "jsonl", "json", "parquet", "CSV", "Parquet"])
def test_every_format_gives_the_same_examples(tmp_path: Path, extension: str) -> None:
    path = write(tmp_path / f"reviews.{extension}", fmt={"json": "jsonl"}.get(extension.lower(), extension.lower()))
    assert examples(table(path)) == [
        (None, "5", 'loved it, "really"', "1"),
        (None, "1", "never\nagain", "2"),
        (None, "4", "", "3"),
        (None, "3", "東京 ok", "4"),
    ]


def test_origin_names_the_file_and_its_data_row(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.csv")
    assert [e.origin for e in table(path).read(tmp_path)][-1] == f"{path} row 4"


def test_read_is_a_generator(tmp_path: Path) -> None:
    assert inspect.isgenerator(table(write(tmp_path / "reviews.parquet")).read(tmp_path))


def test_data_format_overrides_the_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.txt", fmt="tsv")
    assert [e.label for e in table(path, format="tsv").read(tmp_path)] == ["5", "1", "4", "3"]


def test_text_columns_are_joined_with_the_separator(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.parquet")
    texts = [e.text for e in table(path, text_column=["title", "body"], text_separator=" | ").read(tmp_path)]
    assert texts == ['Great | loved it, "really"', "Awful | never\nagain", "Café | ", "Meh | 東京 ok"]


def test_integer_labels_become_strings(tmp_path: Path) -> None:
    labels = {fmt: [e.label for e in table(write(tmp_path / f"t.{fmt}")).read(tmp_path)] for fmt in WRITERS}
    assert set(map(tuple, labels.values())) == {("5", "1", "4", "3")}


def test_rows_with_empty_or_null_text_are_kept(tmp_path: Path) -> None:
    frame = pd.DataFrame({"body": ["a", None, ""], "stars": ["x", "y", "z"]})
    for fmt in WRITERS:
        assert [e.text for e in table(write(tmp_path / f"t.{fmt}", frame)).read(tmp_path)] == ["a", "", ""]


def test_csv_values_as_written_na_is_a_label_and_007_stays_007(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("body,stars\n007,NA\nnull,007\n", encoding="utf-8")
    assert examples(table(path)) == [(None, "NA", "007", "1"), (None, "007", "null", "2")]


def test_csv_row_not_utf8_is_read_as_latin1_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    # A UTF-8 byte order mark, a row in Latin-1, a row in UTF-8.
    path.write_bytes(b"\xef\xbb\xbfbody,stars\ncaf\xe9,a\n" + "naïve,b\n".encode())
    read = list(table(path).read(tmp_path))
    assert [(e.text, e.fallback) for e in read] == [("café", True), ("naïve", False)]


def test_split_column_maps_values_through_split_names(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl")
    assert [e.split for e in table(path, split_column="part").read(tmp_path)] == [
        "train",
        "train",
        "validation",
        "test",
    ]


def test_split_column_value_not_in_split_names_names_value_file_and_row(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", ROWS.assign(part=["train", "train", "holdout", "test"]))
    with pytest.raises(TextclfError, match=rf"^{path} row 3: data.split_column 'part' is 'holdout', not one of"):
        list(table(path, split_column="part").read(tmp_path))


def test_split_column_with_a_test_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match="data.split_column=part and data.test both say"):
        table(tmp_path / "a.csv", test=str(tmp_path / "b.csv"), split_column="part")


def test_validation_and_test_files_give_their_splits(tmp_path: Path) -> None:
    train, validation, test = (
        write(tmp_path / f"{name}.{fmt}") for name, fmt in [("a", "csv"), ("b", "jsonl"), ("c", "parquet")]
    )
    read = list(table(train, validation=str(validation), test=str(test)).read(tmp_path))
    assert [e.split for e in read] == ["train"] * 4 + ["validation"] * 4 + ["test"] * 4
    assert read[4].origin == f"{validation} row 1"


@pytest.mark.parametrize("role", ["test", "validation"])
def test_a_held_out_file_that_is_the_training_file_is_an_error(tmp_path: Path, role: str) -> None:
    train = write(tmp_path / "a.csv")
    same = tmp_path / "sub" / ".." / "a.csv"
    (tmp_path / "sub").mkdir()
    with pytest.raises(TextclfError, match=rf"^data.{role} is the training file"):
        table(train, **{role: str(same)}).fetch(tmp_path / "raw")
    with pytest.raises(TextclfError, match=rf"^data.{role} is the training file"):
        list(table(train, **{role: str(same)}).read(tmp_path / "raw"))


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("missing.csv", None, {}, "missing.csv: no such file or directory"),
        ("t.csv", "title,stars\nx,1\n", {}, r"t.csv: no column 'body' \(its columns: title, stars\)"),
        (
            "t.parquet",
            ROWS,
            {"label_column": "label"},
            r"t.parquet: no column 'label' \(its columns: title, body, stars, part\)",
        ),
        ("t.jsonl", ROWS, {"text_column": ["title", "text"]}, r"t.jsonl: no column 'text' \(its columns: title, body"),
        ("t.csv", "", {}, r"t.csv: empty file \(no rows\)"),
        ("t.jsonl", "", {}, r"t.jsonl: empty file \(no rows\)"),
        ("t.csv", "body,stars\n", {}, r"t.csv: no rows"),
        ("t.parquet", ROWS.iloc[:0], {}, r"t.parquet: no rows"),
        ("t.txt", "body,stars\nx,1\n", {}, r"t.txt: unknown table extension '.txt' \(supported: .csv, .tsv, .jsonl"),
        ("t.parquet", "PAR1 not really", {}, r"t.parquet: not a readable Parquet file \(.*\); write it again"),
        (
            "t.csv",
            'body,stars\n"broken,1\nnext,2\n',
            {},
            r"t.csv: not readable as CSV \(.*EOF inside string.*\); check its quoting",
        ),
        ("t.jsonl", '{"body": "a", "stars": 1}\n{"body": \n', {}, r"t.jsonl: not readable as JSON Lines"),
        ("t.csv", "body,stars\na,1\nb,\n", {}, r"t.csv row 2: no label in column 'stars'"),
        ("t.jsonl", '{"body": "a", "stars": 1}\n{"body": "b", "stars": null}\n', {}, r"t.jsonl row 2: no label"),
        (
            "t.jsonl",
            '{"body": "a", "stars": ["x", ""]}\n',
            {},
            r"t.jsonl row 1: an empty label name in the label list \['x', ''\] of column 'stars'",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, name: str, content: object, options: dict, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, pd.DataFrame):
        write(path, content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    with pytest.raises(TextclfError, match=message) as error:
        list(table(path, **options).read(tmp_path))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(str(path))


def test_unknown_format_lists_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(
        TextclfError, match=r"data.format: unknown format 'xlsx' \(supported: csv, tsv, jsonl, parquet\)"
    ):
        table(tmp_path / "t.csv", format="xlsx")
    with pytest.raises(TextclfError, match=r"data.format: input should be 'csv', 'tsv', 'jsonl' or 'parquet'"):
        validate(compose(["data=table", "data.train=t.csv", "data.format=xlsx"], root=REPO_ROOT), targets=("data",))


def test_a_directory_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match="is a directory; a table is one file"):
        list(table(tmp_path).read(tmp_path))


def test_max_document_bytes_bounds_a_row(tmp_path: Path) -> None:
    path = write(tmp_path / "t.parquet", pd.DataFrame({"body": ["short", "x" * 100], "stars": [1, 2]}))
    source = build(
        "data",
        {**defaults(), "train": str(path), "text_column": "body", "label_column": "stars"},
        limits=Limits(max_document_bytes=50),
    )
    with pytest.raises(
        TextclfError, match=rf"{path} row 2: its text is 100 bytes, more than data.max_document_bytes=50"
    ):
        list(source.read(tmp_path))


def test_nothing_is_written_to_the_hugging_face_cache(tmp_path: Path, hf_home: Path) -> None:
    for fmt in WRITERS:
        list(table(write(tmp_path / f"t.{fmt}")).read(tmp_path))
    assert not hf_home.exists() or list(hf_home.rglob("*")) == []


# -- fetch: hashes, pins, URLs -----------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_hashes_a_local_file_prints_the_pin_and_writes_nothing(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "t.csv")
    raw = tmp_path / "raw"
    raw.mkdir()
    record = table(path).fetch(raw, progress=False)
    assert record.content_sha256 == sha256_of(path)
    assert record.inputs == {str(path): sha256_of(path)}
    assert f"-S data.sha256={sha256_of(path)}" in capsys.readouterr().out
    assert list(raw.iterdir()) == []
    assert table(path).local_inputs() == [str(path)]


def test_several_local_files_are_pinned_by_their_combined_hash(tmp_path: Path, capsys) -> None:
    train, test = write(tmp_path / "a.csv"), write(tmp_path / "b.parquet")
    combined = combined_sha256([("train", sha256_of(train)), ("test", sha256_of(test))])
    record = table(train, test=str(test), sha256=combined.upper()).fetch(tmp_path / "raw", progress=False)
    assert record.content_sha256 == combined
    assert capsys.readouterr().out == ""  # pinned: no hint
    table(train, test=str(test), sha256={"test": sha256_of(test)}).fetch(tmp_path / "raw", progress=False)


def test_a_changed_file_fails_its_pin(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv")
    pinned = sha256_of(path)
    write(path, ROWS.iloc[:3])
    with pytest.raises(TextclfError, match=rf"{path}: its sha256 is {sha256_of(path)}, not data.sha256={pinned}"):
        table(path, sha256=pinned).fetch(tmp_path / "raw", progress=False)


def test_fetch_checks_the_columns_before_preprocess(tmp_path: Path) -> None:
    path = write(tmp_path / "t.parquet")
    with pytest.raises(TextclfError, match="no column 'review'"):
        table(path, text_column="review").fetch(tmp_path / "raw", progress=False)


def test_a_url_is_downloaded_into_raw_and_read_from_there(tmp_path: Path, served: tuple[Path, str]) -> None:
    directory, base = served
    path = write(directory / "reviews.jsonl")
    raw = tmp_path / "raw"
    source = table(f"{base}/reviews.jsonl", sha256=sha256_of(path))
    record = source.fetch(raw, progress=False)
    assert record.content_sha256 == sha256_of(path)
    assert (raw / "train" / "reviews.jsonl").read_bytes() == path.read_bytes()
    assert source.local_inputs() == []
    path.unlink()  # read() takes the copy
    assert [e.origin for e in source.read(raw)][0] == f"{base}/reviews.jsonl row 1"
    assert examples(source, raw) == examples(table(write(tmp_path / "same.jsonl")))


def test_a_url_without_sha256_is_an_error(tmp_path: Path, served: tuple[Path, str]) -> None:
    directory, base = served
    write(directory / "reviews.csv")
    with pytest.raises(TextclfError, match=r"data.sha256: required for a URL"):
        table(f"{base}/reviews.csv").fetch(tmp_path / "raw", progress=False)


def test_several_urls_are_pinned_one_hash_each(tmp_path: Path, served: tuple[Path, str]) -> None:
    directory, base = served
    train, test = write(directory / "a.csv"), write(directory / "b.csv")
    urls = {"train": f"{base}/a.csv", "test": f"{base}/b.csv"}
    with pytest.raises(
        TextclfError, match=r"each file needs its own hash.*data.sha256=\{train: <sha256>, test: <sha256>\}"
    ):
        table(urls["train"], test=urls["test"], sha256=sha256_of(train)).fetch(tmp_path / "raw", progress=False)
    pins = {"train": sha256_of(train), "test": sha256_of(test)}
    record = table(urls["train"], test=urls["test"], sha256=pins).fetch(tmp_path / "raw", progress=False)
    assert record.content_sha256 == combined_sha256(pins.items())
    assert record.inputs == {urls["train"]: pins["train"], urls["test"]: pins["test"]}


# -- the config ----------------------------------------------------------------------------------


def test_composed_config_validates_and_builds_a_table(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.csv")
    overrides = ["data=table", f"data.train={path}", "data.text_column=[title,body]", "data.label_column=stars"]
    cfg = validate(compose(overrides, root=REPO_ROOT), targets=("data",))
    assert cfg.data.corpus == "reviews"
    source = build("data", cfg.data.source_options, limits=Limits(), downloads=None)
    assert isinstance(source, Table)
    assert [e.text for e in source.read(tmp_path)][0] == 'Great\nloved it, "really"'
