"""data=folder: one folder per class, as a directory, a tar (gz, bz2, xz, plain) or a zip, local
or a URL (a server on 127.0.0.1 and file://). Every corpus is built here, in tmp_path."""

from __future__ import annotations

import hashlib
import inspect
import io
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from textclf.config import build, validate
from textclf.data.sources import folder as folder_module
from textclf.data.sources.base import Example, Limits
from textclf.data.sources.folder import Folder
from textclf.errors import TextclfError
from textclf.params import compose

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_NAMES = {"train": ["train"], "validation": ["validation", "val", "dev"], "test": ["test"]}
WRONG_SHA = "0" * 64

FLAT = {"sports/1.txt": b"goal", "sports/2.txt": b"match", "weather/1.txt": b"rain", "weather/b.txt": b"sun"}
SPLIT = {
    "train/sports/1.txt": b"goal",
    "train/weather/1.txt": b"rain",
    "test/sports/9.txt": b"match",
    "test/weather/9.txt": b"sun",
}


def make(path: Path | str, limits: Limits | None = None, **options: object) -> Folder:
    values = {"sha256": None, "encoding": "utf-8", "split_names": SPLIT_NAMES, **options}
    return Folder(str(path), limits=limits, **values)  # type: ignore[arg-type]


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, payload in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", seed: int | None = 0) -> Path:
    """Members in a shuffled order (seed None: as given), so reading has to sort them."""
    names = list(files)
    if seed is not None:
        random.Random(seed).shuffle(names)
    with tarfile.open(path, mode) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    names = list(files)
    random.Random(1).shuffle(names)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as packed:
        for name in names:
            packed.writestr(name, files[name])
    return path


def examples(source: Folder, raw_dir: Path | None = None) -> list[Example]:
    return list(source.read(raw_dir or Path("unused-raw")))


def rows(found: list[Example]) -> list[tuple[str | None, str, str]]:
    return [(example.split, example.label, example.text) for example in found]


def one_line_error(source: Folder, named: str, raw_dir: Path | None = None) -> str:
    """The error reading ``source`` raises: one line, naming ``named``."""
    with pytest.raises(TextclfError) as caught:
        examples(source, raw_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert named in message
    return message


# --- layouts ------------------------------------------------------------------------------


def test_class_folders_give_unsplit_examples_sorted_by_class_and_path(tmp_path: Path) -> None:
    found = examples(make(write_tree(tmp_path / "corpus", FLAT)))
    assert rows(found) == [
        (None, "sports", "goal"),
        (None, "sports", "match"),
        (None, "weather", "rain"),
        (None, "weather", "sun"),
    ]
    assert [example.origin for example in found] == ["sports/1.txt", "sports/2.txt", "weather/1.txt", "weather/b.txt"]
    assert not any(example.fallback for example in found)


def test_numbered_files_are_in_number_order_in_a_directory_and_an_archive(tmp_path: Path) -> None:
    """9.txt before 10.txt (and msg2 before msg10): data.holdout=last holds out the highest."""
    files = {f"a/{name}": name.encode() for name in ("10.txt", "9.txt", "100.txt", "msg10", "msg2")}
    expected = ["9.txt", "10.txt", "100.txt", "msg2", "msg10"]
    directory = examples(make(write_tree(tmp_path / "corpus", files)))
    packed = examples(make(write_tar(tmp_path / "corpus.tar.gz", files, seed=3)))
    assert [example.text for example in directory] == expected
    assert [example.text for example in packed] == expected


def test_one_wrapping_folder_is_looked_through(tmp_path: Path) -> None:
    write_tree(tmp_path / "outer", {f"corpus/{name}": payload for name, payload in FLAT.items()})
    found = examples(make(tmp_path / "outer"))
    assert rows(found) == rows(examples(make(write_tree(tmp_path / "plain", FLAT))))
    assert found[0].origin == "corpus/sports/1.txt"


def test_split_folders_give_train_and_test_examples(tmp_path: Path) -> None:
    found = examples(make(write_tree(tmp_path / "corpus", SPLIT)))
    assert rows(found) == [
        ("train", "sports", "goal"),
        ("train", "weather", "rain"),
        ("test", "sports", "match"),
        ("test", "weather", "sun"),
    ]


def test_split_folders_inside_a_wrapping_folder(tmp_path: Path) -> None:
    write_tree(tmp_path / "outer", {f"news/{name}": payload for name, payload in SPLIT.items()})
    found = examples(make(tmp_path / "outer"))
    assert [example.split for example in found] == ["train", "train", "test", "test"]
    assert found[0].origin == "news/train/sports/1.txt"


@pytest.mark.parametrize("name", ["validation", "val", "dev", "Dev"])
def test_validation_folders_by_any_of_their_names_are_the_validation_split(tmp_path: Path, name: str) -> None:
    files = {**SPLIT, f"{name}/sports/5.txt": b"pass", f"{name}/weather/5.txt": b"fog"}
    found = examples(make(write_tree(tmp_path / "corpus", files)))
    assert [example.split for example in found] == ["train", "train", "validation", "validation", "test", "test"]
    assert rows(found)[2] == ("validation", "sports", "pass")


def test_capitalized_split_folders_are_splits_not_classes(tmp_path: Path) -> None:
    files = {name.replace("train/", "Train/").replace("test/", "TEST/"): payload for name, payload in SPLIT.items()}
    found = examples(make(write_tree(tmp_path / "corpus", files)))
    assert {example.split for example in found} == {"train", "test"}


def test_split_names_are_configurable(tmp_path: Path) -> None:
    files = {name.replace("train/", "learn/").replace("test/", "exam/"): payload for name, payload in SPLIT.items()}
    split_names = {"train": ["learn"], "validation": [], "test": ["exam"]}
    found = examples(make(write_tree(tmp_path / "corpus", files), split_names=split_names))
    assert [example.split for example in found] == ["train", "train", "test", "test"]


def test_a_split_layout_with_only_a_train_folder_is_fine(tmp_path: Path) -> None:
    files = {name: payload for name, payload in SPLIT.items() if name.startswith("train/")}
    found = examples(make(write_tree(tmp_path / "corpus", files)))
    assert [example.split for example in found] == ["train", "train"]


def test_files_in_subfolders_of_a_class_belong_to_it(tmp_path: Path) -> None:
    files = {"a/1.txt": b"one", "a/2021/x/2.txt": b"two", "a/2021/3.txt": b"three", "b/deep/er/4.txt": b"four"}
    found = examples(make(write_tree(tmp_path / "corpus", files)))
    assert [(example.label, example.origin) for example in found] == [
        ("a", "a/1.txt"),
        ("a", "a/2021/3.txt"),
        ("a", "a/2021/x/2.txt"),
        ("b", "b/deep/er/4.txt"),
    ]


def test_labels_keep_spaces_and_unicode(tmp_path: Path) -> None:
    files = {"sci fi/1.txt": b"x", "caf\u00e9 cr\u00e8me/1.txt": b"y", "\u6771\u4eac/1.txt": b"z"}
    found = examples(make(write_tree(tmp_path / "corpus", files)))
    assert {example.label for example in found} == {"sci fi", "caf\u00e9 cr\u00e8me", "\u6771\u4eac"}


# --- however it is packed -----------------------------------------------------------------

NESTED = {
    "corpus/train/a b/1.txt": b"one",
    "corpus/train/a/x/2.txt": b"two",
    "corpus/train/a/10.txt": b"ten",
    "corpus/train/\u00e9t\u00e9/1.txt": "caf\u00e9".encode(),
    "corpus/val/a/3.txt": b"three",
    "corpus/val/a b/3.txt": b"three b",
    "corpus/val/\u00e9t\u00e9/3.txt": b"summer",
    "corpus/test/a/4.txt": b"four",
    "corpus/test/a b/4.txt": b"four b",
    "corpus/test/\u00e9t\u00e9/4.txt": b"\xff\xfe",
    "corpus/.DS_Store": b"junk",
    "corpus/train/a/._10.txt": b"junk",
    "corpus/README.txt": b"about",
}


@pytest.mark.parametrize("layout", [FLAT, SPLIT, NESTED], ids=["flat", "split", "nested"])
@pytest.mark.parametrize("packing", ["tar.gz", "tar.bz2", "tar.xz", "tar", "zip"])
def test_a_directory_and_its_archive_give_the_same_examples_in_the_same_order(
    tmp_path: Path, layout: dict[str, bytes], packing: str
) -> None:
    directory = make(write_tree(tmp_path / "corpus", layout))
    archive_path = tmp_path / f"corpus.{packing}"
    if packing == "zip":
        write_zip(archive_path, layout)
    else:
        write_tar(archive_path, layout, {"tar": "w"}.get(packing, "w:" + packing.removeprefix("tar.")))
    packed = make(archive_path)
    assert examples(packed) == examples(directory)
    from_directory, from_archive = directory.fetch(tmp_path / "raw"), packed.fetch(tmp_path / "raw")
    assert from_archive.content_sha256 == from_directory.content_sha256
    assert from_archive.skipped == from_directory.skipped
    assert from_archive.inputs == {str(archive_path): hashlib.sha256(archive_path.read_bytes()).hexdigest()}


def test_a_shuffled_tar_read_in_several_passes_keeps_the_sorted_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"c{index % 3}/{index:03d}.txt": f"doc {index}".encode() for index in range(60)}
    expected = examples(make(write_tree(tmp_path / "corpus", files)))
    archive_path = write_tar(tmp_path / "corpus.tar.gz", files, seed=7)
    monkeypatch.setattr(folder_module, "READ_BUFFER_BYTES", 20)  # about 3 documents per pass
    assert examples(make(archive_path)) == expected


def test_reading_is_a_generator(tmp_path: Path) -> None:
    assert inspect.isgenerator(make(write_tree(tmp_path / "corpus", FLAT)).read(tmp_path))


# --- what is skipped ----------------------------------------------------------------------


def test_hidden_and_system_files_are_skipped_and_counted(tmp_path: Path) -> None:
    files = {
        **FLAT,
        ".DS_Store": b"x",
        "sports/._1.txt": b"x",
        "weather/Thumbs.db": b"x",
        "weather/desktop.ini": b"x",
        "__MACOSX/sports/._1.txt": b"x",
        ".git/objects/ab": b"x",
    }
    source = make(write_tree(tmp_path / "corpus", files))
    assert rows(examples(source)) == rows(examples(make(write_tree(tmp_path / "plain", FLAT))))
    assert source.fetch(tmp_path / "raw").skipped == {"hidden": 6}


def test_files_beside_the_class_folders_are_skipped_and_counted(tmp_path: Path) -> None:
    source = make(write_tree(tmp_path / "corpus", {**FLAT, "README.txt": b"about", "LICENSE": b"mit"}))
    assert len(examples(source)) == len(FLAT)
    assert source.fetch(tmp_path / "raw").skipped == {"top_level_files": 2}


def test_files_beside_class_folders_inside_split_folders_are_skipped_and_counted(tmp_path: Path) -> None:
    source = make(write_tree(tmp_path / "corpus", {**SPLIT, "train/notes.txt": b"x", "README": b"x"}))
    assert len(examples(source)) == len(SPLIT)
    assert source.fetch(tmp_path / "raw").skipped == {"top_level_files": 2}


# --- text ---------------------------------------------------------------------------------


def test_utf8_text_is_read_as_such(tmp_path: Path) -> None:
    files = {"a/1.txt": "caf\u00e9 au lait".encode(), "b/1.txt": "\u6771\u4eac\u30bf\u30ef\u30fc".encode()}
    found = examples(make(write_tree(tmp_path / "corpus", files)))
    assert [(example.text, example.fallback) for example in found] == [
        ("caf\u00e9 au lait", False),
        ("\u6771\u4eac\u30bf\u30ef\u30fc", False),
    ]


def test_invalid_utf8_falls_back_to_latin1_and_is_flagged(tmp_path: Path) -> None:
    found = examples(make(write_tree(tmp_path / "corpus", {"a/1.txt": b"caf\xe9", "b/1.txt": b"ok"})))
    assert [(example.text, example.fallback) for example in found] == [("caf\u00e9", True), ("ok", False)]


def test_the_configured_encoding_is_used(tmp_path: Path) -> None:
    found = examples(
        make(write_tree(tmp_path / "corpus", {"a/1.txt": b"caf\xe9", "b/1.txt": b"ok"}), encoding="cp1252")
    )
    assert [(example.text, example.fallback) for example in found] == [("caf\u00e9", False), ("ok", False)]


# --- bad input: one line naming the path --------------------------------------------------


def test_a_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    one_line_error(make(missing), str(missing))
    with pytest.raises(TextclfError, match="no such file"):
        make(missing).fetch(tmp_path / "raw")


def test_no_class_folders_says_what_was_found(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", {"1.txt": b"a", "2.txt": b"b", "3.txt": b"c"})
    message = one_line_error(make(root), str(root))
    assert "no class folders" in message and "found 3 files and no folders" in message


def test_an_empty_folder_has_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    assert "found 0 files and no folders" in one_line_error(make(tmp_path / "corpus"), "corpus")


def test_an_archive_without_class_folders_says_what_was_found(tmp_path: Path) -> None:
    archive_path = write_tar(tmp_path / "flat.tar.gz", {"1.txt": b"a", ".DS_Store": b"x"})
    message = one_line_error(make(archive_path), str(archive_path))
    assert "found 1 file, 1 hidden entry and no folders" in message


def test_mixed_layouts_name_the_split_and_class_folders(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", {**SPLIT, "extra/1.txt": b"x"})
    message = one_line_error(make(root), str(root))
    assert "mixed layout" in message and "'test', 'train'" in message and "'extra'" in message


def test_a_split_layout_without_a_train_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", {"test/a/1.txt": b"x", "val/a/1.txt": b"y"})
    assert "no training folder" in one_line_error(make(root), str(root))


def test_two_folders_of_one_split_are_an_error(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", {**SPLIT, "val/a/1.txt": b"x", "dev/a/1.txt": b"y"})
    message = one_line_error(make(root), str(root))
    assert "'dev', 'val'" in message and "validation split" in message


def test_a_split_folder_without_class_folders(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", {"train/a/1.txt": b"x", "test/1.txt": b"y"})
    assert "split folder 'test' holds no class folders" in one_line_error(make(root), str(root))


def test_an_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", {**FLAT, "empty/.DS_Store": b"x"})
    (root / "also-empty" / "sub").mkdir(parents=True)
    message = one_line_error(make(root), str(root))
    assert "class folders 'also-empty', 'empty' hold no documents" in message


def test_an_empty_class_folder_inside_a_wrapped_split_is_named_by_its_path(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "outer", {f"c/{name}": payload for name, payload in SPLIT.items()})
    (root / "c" / "test" / "hail").mkdir()
    assert "'c/test/hail' holds no documents" in one_line_error(make(root), str(root))


@pytest.mark.parametrize("packing", ["directory", "tar.gz", "zip"])
def test_a_document_over_the_document_limit(tmp_path: Path, packing: str) -> None:
    files = {**FLAT, "weather/big.txt": b"x" * 100}
    if packing == "directory":
        path = write_tree(tmp_path / "corpus", files)
    elif packing == "zip":
        path = write_zip(tmp_path / "corpus.zip", files)
    else:
        path = write_tar(tmp_path / "corpus.tar.gz", files)
    message = one_line_error(make(path, Limits(max_document_bytes=50)), str(path))
    assert "'weather/big.txt' is 100 bytes, over data.max_document_bytes=50" in message


@pytest.mark.parametrize("packing", ["tar.gz", "zip"])
def test_an_archive_over_the_archive_limit(tmp_path: Path, packing: str) -> None:
    files = {f"c{index % 2}/{index}.txt": b"x" * 100 for index in range(20)}
    path = write_zip(tmp_path / "c.zip", files) if packing == "zip" else write_tar(tmp_path / "c.tar.gz", files)
    assert "data.max_archive_bytes=1000" in one_line_error(make(path, Limits(max_archive_bytes=1000)), str(path))


def test_a_truncated_tar_gz_is_corrupt(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "corpus.tar.gz", {f"c{i % 2}/{i}.txt": random.randbytes(500) for i in range(20)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "corrupt or truncated" in one_line_error(make(path), str(path))


def test_a_damaged_zip_is_corrupt(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "corpus.zip", FLAT)
    path.write_bytes(path.read_bytes()[:-30])  # the end of its central directory
    assert "corrupt or unreadable zip" in one_line_error(make(path), str(path))


def test_a_zip_member_with_a_bad_crc_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "corpus.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as packed:
        packed.writestr("a/1.txt", b"hello world")
        packed.writestr("b/1.txt", b"other")
    path.write_bytes(path.read_bytes().replace(b"hello world", b"hellO world"))
    assert "corrupt or unreadable zip" in one_line_error(make(path), str(path))


def test_a_file_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngood,1\n")
    assert "data=table" in one_line_error(make(path), str(path))


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../escape.txt"])
@pytest.mark.parametrize("packing", ["tar.gz", "zip"])
def test_a_member_outside_the_archive_is_refused(tmp_path: Path, name: str, packing: str) -> None:
    files = {**FLAT, name: b"x"}
    path = write_zip(tmp_path / "c.zip", files) if packing == "zip" else write_tar(tmp_path / "c.tar.gz", files)
    assert "escapes the target directory" in one_line_error(make(path), str(path))


def test_links_in_a_tar_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo("a/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    assert "links are not allowed" in one_line_error(make(path), str(path))


def test_links_in_a_zip_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.zip"
    with zipfile.ZipFile(path, "w") as packed:
        packed.writestr("a/1.txt", b"x")
        link = zipfile.ZipInfo("a/link")
        link.external_attr = (0o120777 << 16) | 0x20
        packed.writestr(link, "/etc/passwd")
    assert "a link or a device" in one_line_error(make(path), str(path))


def test_a_folder_linked_into_itself_is_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", FLAT)
    (root / "sports" / "loop").symlink_to(root / "sports")
    assert "links back to a folder" in one_line_error(make(root), str(root))


def test_linked_files_and_folders_are_followed(tmp_path: Path) -> None:
    elsewhere = write_tree(tmp_path / "elsewhere", {"w/1.txt": b"rain"})
    root = write_tree(tmp_path / "corpus", {"sports/1.txt": b"goal"})
    (root / "weather").symlink_to(elsewhere / "w")
    assert rows(examples(make(root))) == [(None, "sports", "goal"), (None, "weather", "rain")]


def test_one_split_name_in_two_splits_is_refused() -> None:
    with pytest.raises(TextclfError, match="data.split_names: 'Dev' names both the validation and the test split"):
        make("x", split_names={"train": ["train"], "validation": ["dev"], "test": ["Dev"]})


# --- fetch: hashes and pins ---------------------------------------------------------------


def test_fetch_of_a_directory_hashes_its_documents_and_prints_the_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tree(tmp_path / "corpus", {**FLAT, ".DS_Store": b"x"})
    raw = tmp_path / "raw"
    raw.mkdir()
    record = make(root).fetch(raw)
    assert record.inputs == {str(root): record.content_sha256}
    assert record.skipped == {"hidden": 1}
    assert f"-S data.sha256={record.content_sha256}" in capsys.readouterr().out
    assert list(raw.iterdir()) == []  # a local input is read where it is
    assert make(root, sha256=record.content_sha256.upper()).fetch(raw) == record


def test_the_content_hash_follows_the_documents(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", FLAT)
    before = make(root).fetch(tmp_path / "raw").content_sha256
    (root / "README.txt").write_bytes(b"not a document")
    (root / ".DS_Store").write_bytes(b"x")
    assert make(root).fetch(tmp_path / "raw").content_sha256 == before
    (root / "sports" / "1.txt").write_bytes(b"own goal")
    assert make(root).fetch(tmp_path / "raw").content_sha256 != before


def test_a_pinned_directory_that_changed_is_an_error(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "corpus", FLAT)
    with pytest.raises(TextclfError, match="data.sha256=0000") as caught:
        make(root, sha256=WRONG_SHA).fetch(tmp_path / "raw")
    assert str(root) in str(caught.value) and "\n" not in str(caught.value)


def test_a_local_archive_is_pinned_by_its_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_zip(tmp_path / "corpus.zip", FLAT)
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    assert make(path, sha256=file_hash).fetch(tmp_path / "raw").inputs == {str(path): file_hash}
    assert capsys.readouterr().out == ""  # pinned: nothing to suggest
    with pytest.raises(TextclfError, match=f"its sha256 is {file_hash}, not data.sha256={WRONG_SHA}"):
        make(path, sha256=WRONG_SHA).fetch(tmp_path / "raw")


def test_local_inputs_are_the_path_and_never_a_url(tmp_path: Path) -> None:
    assert make(tmp_path / "corpus").local_inputs() == [str(tmp_path / "corpus")]
    assert make("https://example.org/corpus.zip", sha256=WRONG_SHA).local_inputs() == []


# --- URLs ---------------------------------------------------------------------------------


def test_a_url_is_downloaded_into_raw_and_read_from_there(tmp_path: Path, served: tuple[Path, str]) -> None:
    directory, base = served
    path = write_tar(directory / "news.tar.gz", {f"news/{name}": payload for name, payload in SPLIT.items()})
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    source = make(f"{base}/news.tar.gz", sha256=file_hash)
    raw = tmp_path / "raw"
    raw.mkdir()
    record = source.fetch(raw, progress=False)
    assert [p.name for p in raw.iterdir()] == ["news.tar.gz"]
    assert record.inputs == {f"{base}/news.tar.gz": file_hash}
    assert record.content_sha256 == make(write_tree(tmp_path / "same", SPLIT)).fetch(tmp_path / "r2").content_sha256
    path.unlink()  # read never goes back to the URL
    assert rows(examples(source, raw)) == rows(examples(make(tmp_path / "same")))


def test_a_file_url_is_downloaded_too(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "corpus.zip", FLAT)
    source = make(path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    source.fetch(tmp_path / "raw", progress=False)
    assert (tmp_path / "raw" / "corpus.zip").is_file()
    assert len(examples(source, tmp_path / "raw")) == len(FLAT)


def test_a_url_without_sha256_names_data_sha256(tmp_path: Path, served: tuple[Path, str]) -> None:
    directory, base = served
    write_zip(directory / "corpus.zip", FLAT)
    with pytest.raises(TextclfError, match="data.sha256: required for the URL") as caught:
        make(f"{base}/corpus.zip").fetch(tmp_path / "raw", progress=False)
    assert "\n" not in str(caught.value) and f"{base}/corpus.zip" in str(caught.value)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_a_url_whose_bytes_do_not_match_sha256_is_an_error(tmp_path: Path, served: tuple[Path, str]) -> None:
    directory, base = served
    write_zip(directory / "corpus.zip", FLAT)
    with pytest.raises(TextclfError, match="sha256"):
        make(f"{base}/corpus.zip", sha256=WRONG_SHA).fetch(tmp_path / "raw", progress=False)
    assert list((tmp_path / "raw").iterdir()) == []


def test_reading_a_url_before_its_download_says_so(tmp_path: Path) -> None:
    source = make("https://example.org/corpus.zip", sha256=WRONG_SHA)
    assert "run the download stage first" in one_line_error(source, "https://example.org/corpus.zip", tmp_path)


# --- the config ---------------------------------------------------------------------------

# A problem names its key, or the key within it (``data.split_names.train: ...``).
FOLDER_KEYS = tuple(f"data.{key}{end}" for key in ("path", "sha256", "encoding", "split_names") for end in ":.")


def folder_problems(*overrides: str) -> list[str]:
    """The config check's problems with Folder's own keys (the rest of the WIP schema aside)."""
    try:
        validate(compose(["data=folder", *overrides], root=REPO_ROOT), targets=("data",))
    except TextclfError as error:
        problems = str(error).removeprefix("invalid config: ").split("; ")
        return [problem for problem in problems if problem.startswith(FOLDER_KEYS)]
    return []


def test_the_config_check_accepts_the_folder_yaml(tmp_path: Path) -> None:
    assert folder_problems(f"data.path={tmp_path}") == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.path=''", "data.path"),
        ("data.sha256=abc", "data.sha256"),
        ("data.encoding=no-such-codec", "data.encoding"),
        ("data.split_names.train=[]", "data.split_names"),
        ("+data.split_names.holdout=[x]", "data.split_names"),
    ],
)
def test_the_config_check_rejects_bad_folder_values(tmp_path: Path, override: str, key: str) -> None:
    problems = folder_problems(f"data.path={tmp_path}", override)
    assert len(problems) == 1 and key in problems[0]


def test_the_composed_folder_yaml_builds_a_folder(tmp_path: Path) -> None:
    cfg = compose(["data=folder", f"data.path={write_tree(tmp_path / 'corpus', FLAT)}"], root=REPO_ROOT)
    options = {key: cfg.data[key] for key in ("_target_", "path", "sha256", "encoding", "split_names")}
    from omegaconf import OmegaConf

    source = build("data", OmegaConf.to_container(OmegaConf.create(options)), limits=Limits())
    assert isinstance(source, Folder)
    assert len(examples(source)) == len(FLAT)


def test_the_composed_config_validates_and_builds_a_folder(tmp_path: Path) -> None:
    cfg = validate(compose(["data=folder", f"data.path={tmp_path}"], root=REPO_ROOT), targets=("data",))
    assert isinstance(build("data", cfg.data.source_options, limits=Limits()), Folder)
