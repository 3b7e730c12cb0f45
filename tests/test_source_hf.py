"""data=hf: Hugging Face datasets read into examples (textclf.data.sources.hf).

Every dataset is made here with datasets (save_to_disk) or pandas (data files); the Hub is never
reached (HF_HUB_OFFLINE, caches in tmp_path: the hf_home fixture).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path

import datasets
import pandas as pd
import pytest

from textclf.config import build, validate
from textclf.data.archive import content_hash, content_line
from textclf.data.sources.base import Limits
from textclf.data.sources.hf import OFFLINE_HINT, HuggingFaceDataset, examples_sha256
from textclf.errors import TextclfError
from textclf.params import compose

from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("hf_home")

FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})


def split(texts: list[str], labels: list[int], features: datasets.Features = FEATURES) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A DatasetDict with ClassLabel labels, written by save_to_disk: train, valid, test, unsupervised."""
    path = tmp_path / "reviews"
    splits = {
        "train": split(["good film", "bad film", "fine"], [1, 0, 1]),
        "valid": split(["so so"], [0]),
        "test": split(["great", "awful"], [1, 0]),
        "unsupervised": split(["no label"], [-1]),
    }
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


@functools.cache
def defaults() -> dict:
    """conf/data/hf.yaml's own keys, as the data stages build the source from them."""
    return validate(compose(["data=hf", "data.path=x"], root=REPO_ROOT), targets=("data",)).data.source_options


def source(path: Path | str, **options) -> HuggingFaceDataset:
    return build("data", {**defaults(), "path": str(path), **options}, limits=Limits(), downloads=None)


def read(dataset: HuggingFaceDataset) -> list[tuple]:
    return [(e.split, e.label, e.text) for e in dataset.read(Path("unused"))]


def test_save_to_disk_dict_gives_class_names_and_mapped_splits(saved: Path) -> None:
    assert read(source(saved)) == [
        ("train", "pos", "good film"),
        ("train", "neg", "bad film"),
        ("train", "pos", "fine"),
        ("validation", "neg", "so so"),  # "valid" is a validation name (data.split_names)
        ("test", "pos", "great"),
        ("test", "neg", "awful"),
    ]  # "unsupervised" is no split of ours: not read


def test_origin_names_the_dataset_split_and_row(saved: Path) -> None:
    assert [e.origin for e in source(saved).read(Path("unused"))][-1] == f"{saved} test row 2"


def test_read_is_a_generator(saved: Path) -> None:
    assert inspect.isgenerator(source(saved).read(Path("unused")))


def test_only_a_train_split_gives_train_examples(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": split(["a", "b"], [0, 1])}).save_to_disk(str(tmp_path / "d"))
    assert read(source(tmp_path / "d")) == [("train", "neg", "a"), ("train", "pos", "b")]


def test_a_saved_dataset_without_splits_gives_no_split(tmp_path: Path) -> None:
    split(["a", "b"], [0, 1]).save_to_disk(str(tmp_path / "d"))
    assert read(source(tmp_path / "d")) == [(None, "neg", "a"), (None, "pos", "b")]


def test_no_split_matching_split_names_lists_its_splits(tmp_path: Path) -> None:
    datasets.DatasetDict({"fit": split(["a"], [0]), "holdout": split(["b"], [1])}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(TextclfError, match=r"no training split: it has the splits fit, holdout, and data.split_names"):
        read(source(tmp_path / "d"))
    mapped = source(tmp_path / "d", split_names={"train": ["fit"], "test": ["holdout"]})
    assert read(mapped) == [("train", "neg", "a"), ("test", "pos", "b")]


def test_text_columns_are_joined_and_string_labels_kept(tmp_path: Path) -> None:
    table = datasets.Dataset.from_dict({"title": ["T"], "body": ["B"], "topic": [7]})
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "d"))
    dataset = source(tmp_path / "d", text_column=["title", "body"], text_separator=": ", label_column="topic")
    assert read(dataset) == [("train", "7", "T: B")]


def test_a_missing_column_lists_the_columns(saved: Path) -> None:
    with pytest.raises(TextclfError, match=rf"^{saved}: no column 'review' \(its columns: text, label\)"):
        read(source(saved, text_column="review"))


def test_a_class_label_of_minus_one_is_a_missing_label(saved: Path) -> None:
    with pytest.raises(TextclfError, match=rf"^{saved} unsupervised row 1: no label in column 'label'"):
        read(source(saved, split_names={"train": ["unsupervised"]}))


def test_list_labels_are_read_as_label_sets(tmp_path: Path) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.List(datasets.Value("string"))})
    datasets.DatasetDict({"train": split(["a", "b"], [["x", "y"], []], features)}).save_to_disk(str(tmp_path / "d"))
    assert read(source(tmp_path / "d")) == [("train", ("x", "y"), "a"), ("train", (), "b")]


def test_a_list_of_class_labels_gives_their_names(tmp_path: Path) -> None:
    names = datasets.ClassLabel(names=["neg", "pos", "mixed"])
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.List(names)})
    datasets.DatasetDict({"train": split(["a"], [[2, 0]], features)}).save_to_disk(str(tmp_path / "d"))
    assert read(source(tmp_path / "d")) == [("train", ("mixed", "neg"), "a")]


def test_local_data_files_directory_splits_by_file_name(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(files / "train.csv", index=False)
    pd.DataFrame({"text": ["c"], "label": ["x"]}).to_csv(files / "test.csv", index=False)
    assert read(source(files)) == [("train", "x", "a"), ("train", "y", "b"), ("test", "x", "c")]


def test_a_local_data_file_is_a_train_split(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    pd.DataFrame({"text": ["a", "b"], "label": [1, 2]}).to_json(path, orient="records", lines=True)
    assert read(source(path)) == [("train", "1", "a"), ("train", "2", "b")]


def test_nothing_is_written_to_the_hugging_face_cache(tmp_path: Path, saved: Path, hf_home: Path) -> None:
    path = tmp_path / "reviews.parquet"
    pd.DataFrame({"text": ["a"], "label": [1]}).to_parquet(path)
    read(source(saved))
    read(source(path))
    assert not hf_home.exists() or list(hf_home.rglob("*")) == []


def test_an_uncached_hub_id_offline_is_one_line_naming_it_and_a_local_copy() -> None:
    with pytest.raises(TextclfError) as error:
        read(source("someone/not-cached-reviews"))
    message = str(error.value)
    assert message.startswith("data.path=someone/not-cached-reviews: ")
    assert message.endswith(OFFLINE_HINT) and "\n" not in message


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match=r"no such file or directory"):
        read(source(tmp_path / "nowhere"))


def test_revision_with_a_local_path_is_refused(saved: Path) -> None:
    with pytest.raises(TextclfError, match=r"^data.revision: a Hub revision"):
        read(source(saved, revision="main"))


# -- fetch ---------------------------------------------------------------------------------------


def test_fetch_hashes_a_local_directory_like_a_folder(saved: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    record = source(saved).fetch(raw, progress=False)
    files = [file for file in sorted(saved.rglob("*")) if file.is_file()]
    lines = [content_line(f.relative_to(saved).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]
    assert record.content_sha256 == content_hash(lines)
    assert f"-S data.sha256={record.content_sha256}" in capsys.readouterr().out
    assert list(raw.iterdir()) == []  # nothing to keep: read() takes the directory
    assert source(saved).local_inputs() == [str(saved)]
    source(saved, sha256=record.content_sha256).fetch(raw, progress=False)
    with pytest.raises(TextclfError, match=rf"{saved}: its sha256 is {record.content_sha256}, not data.sha256=0+"):
        source(saved, sha256="0" * 64).fetch(raw, progress=False)


def test_fetch_checks_splits_and_columns_first(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match="no column 'review'"):
        source(saved, text_column="review").fetch(tmp_path, progress=False)


def test_fetch_of_a_hub_dataset_hashes_its_examples(saved: Path, tmp_path: Path, monkeypatch) -> None:
    loaded = datasets.load_from_disk(str(saved))
    calls = []

    def load_dataset(path: str, name: str | None = None, revision: str | None = None) -> datasets.DatasetDict:
        calls.append((path, name, revision))
        return loaded

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = source("someone/reviews", name="plain", revision="v1")
    record = hub.fetch(tmp_path, progress=False)
    assert calls[0] == ("someone/reviews", "plain", "v1")
    assert record.content_sha256 == examples_sha256(source(saved).read(tmp_path))
    assert record.inputs == {"someone/reviews@v1": record.content_sha256}
    assert hub.local_inputs() == []
    assert list(tmp_path.iterdir()) == [saved]  # nothing written beside the test's own dataset


def test_examples_sha256_is_over_split_label_and_text(saved: Path) -> None:
    examples = list(source(saved).read(Path("unused")))
    assert examples_sha256(examples) == examples_sha256(list(examples))
    changed = [examples[0].__class__("train", "neg", examples[0].text, "x"), *examples[1:]]
    assert examples_sha256(changed) != examples_sha256(examples)


# -- the config ----------------------------------------------------------------------------------


def test_composed_config_validates_and_builds_a_dataset(saved: Path) -> None:
    cfg = validate(compose(["data=hf", f"data.path={saved}"], root=REPO_ROOT), targets=("data",))
    assert cfg.data.corpus == "reviews"
    built = build("data", cfg.data.source_options, limits=Limits(), downloads=None)
    assert isinstance(built, HuggingFaceDataset)
    assert read(built)[0] == ("train", "pos", "good film")
    named = validate(
        compose(["data=hf", "data.path=someone/reviews", "data.name=plain"], root=REPO_ROOT), targets=("data",)
    )
    assert named.data.source_options["name"] == "plain"  # the dataset's config, not the corpus tag
