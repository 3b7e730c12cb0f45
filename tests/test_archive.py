"""Reading the archive safely (hostile members, damaged bytes) and turning messages into tokens."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from textclf.data.archive import Message, article_order, read_messages
from textclf.encoders.text import Tokenizer, clean, decode, strip_footer, strip_headers, strip_quotes
from textclf.errors import TextclfError

TRAIN, TEST = "20news-bydate-train", "20news-bydate-test"
SPLITS = (TRAIN, TEST)
DEFAULT_PATTERN = r"(?u)\b\w\w+\b"

# A minimal valid corpus: one message per split.
BASE = {f"{TRAIN}/g.one/1": b"hello train", f"{TEST}/g.one/2": b"hello test"}


def write_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = (), mode: str = "w:gz") -> Path:
    """Writes ``files`` as regular members, then the ``extra`` header-only members."""
    with tarfile.open(path, mode) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra:
            tar.addfile(info)
    return path


def member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def hostile_regular(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0
    return info


# --- hostile members ---------------------------------------------------------------------

HOSTILE = {
    "dotdot": (hostile_regular("../escape"), "escapes"),
    "nested-dotdot": (hostile_regular(f"{TRAIN}/g.one/../../../escape"), "escapes"),
    "absolute": (hostile_regular("/etc/x"), "escapes"),
    "symlink": (member(f"{TRAIN}/g.one/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    "hardlink": (member(f"{TRAIN}/g.one/hard", tarfile.LNKTYPE, f"{TRAIN}/g.one/1"), "link"),
    "chardev": (member(f"{TRAIN}/g.one/tty", tarfile.CHRTYPE), "not a regular file"),
    "blockdev": (member(f"{TRAIN}/g.one/sda", tarfile.BLKTYPE), "not a regular file"),
    "fifo": (member(f"{TRAIN}/g.one/pipe", tarfile.FIFOTYPE), "not a regular file"),
}


@pytest.mark.parametrize("mode", ["w:gz", "w"])
@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_member_is_refused_by_name(tmp_path: Path, attack: str, mode: str) -> None:
    info, why = HOSTILE[attack]
    archive = write_tar(tmp_path / "a.tar", BASE, [info], mode=mode)
    before = set(os.listdir(tmp_path))
    with pytest.raises(TextclfError) as caught:
        read_messages(archive, SPLITS)
    message = str(caught.value)
    assert f"'{info.name}'" in message
    assert why in message
    assert set(os.listdir(tmp_path)) == before  # nothing extracted
    assert not (tmp_path.parent / "escape").exists()


def test_hostile_member_before_valid_ones_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(member(f"{TRAIN}/g.one/link", tarfile.SYMTYPE, "../../x"))
        for name, payload in BASE.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(TextclfError, match="link"):
        read_messages(archive, SPLITS)


# --- damaged or missing archives ---------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_archive(tiny_archive, tmp_path: Path, fraction: float) -> None:
    source, _ = tiny_archive
    data = source.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(TextclfError, match="corrupt or truncated") as caught:
        read_messages(cut, SPLITS)
    assert str(cut) in str(caught.value)


def test_truncated_uncompressed_tar(tmp_path: Path) -> None:
    payload = {f"{TRAIN}/g.one/{i}": b"x" * 3000 for i in range(4)} | {f"{TEST}/g.one/9": b"y" * 3000}
    archive = write_tar(tmp_path / "a.tar", payload, mode="w")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(TextclfError, match="corrupt or truncated"):
        read_messages(archive, SPLITS)


def test_flipped_byte_in_gzip_stream(tiny_archive, tmp_path: Path) -> None:
    source, _ = tiny_archive
    data = bytearray(source.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 / ISIZE trailer
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(TextclfError, match="corrupt or truncated"):
        read_messages(bad, SPLITS)


def test_flipped_byte_in_xz_stream(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.xz", {f"{TRAIN}/a.grp/1": b"one " * 500}, mode="w:xz")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed block: lzma raises its own error type
    archive.write_bytes(bytes(data))
    with pytest.raises(TextclfError, match="corrupt or truncated"):
        read_messages(archive, SPLITS)


@pytest.mark.parametrize(
    "garbage",
    [bytes(range(256)) * 8, b"\x1f\x8b" + b"not really gzip" * 40, b"BZh9" + b"\x00\x01" * 300, b"short"],
    ids=["random", "fake-gzip", "fake-bzip2", "short"],
)
def test_garbage_file(tmp_path: Path, garbage: bytes) -> None:
    bad = tmp_path / "garbage.tar.gz"
    bad.write_bytes(garbage)
    with pytest.raises(TextclfError, match="corrupt or truncated"):
        read_messages(bad, SPLITS)


def test_missing_archive(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(TextclfError, match="not found") as caught:
        read_messages(missing, SPLITS)
    assert str(missing) in str(caught.value)


def test_a_directory_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(TextclfError):
        read_messages(tmp_path, SPLITS)


def test_missing_split_is_named(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", {f"{TRAIN}/g.one/1": b"only train"})
    with pytest.raises(TextclfError, match=TEST):
        read_messages(archive, SPLITS)


def test_empty_category_directory_is_named(tmp_path: Path) -> None:
    empty_dir = member(f"{TRAIN}/g.empty", tarfile.DIRTYPE)
    archive = write_tar(tmp_path / "a.tar.gz", BASE, [empty_dir])
    with pytest.raises(TextclfError, match="g.empty"):
        read_messages(archive, SPLITS)


# --- valid archives ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_valid_archive_is_sorted_with_raw_bytes_intact(tmp_path: Path, mode: str) -> None:
    files = {  # written out of order, with a non-message file and a directory entry
        f"{TRAIN}/b.grp/20": b"caf\xe9 na\xefve\r\n\x00binary",
        f"{TEST}/a.grp/5": b"test five",
        f"{TRAIN}/a.grp/3": b"three",
        f"{TRAIN}/a.grp/10": b"ten",
        "README": b"not a message",
        f"{TRAIN}/a.grp/deeper/x": b"too deep",
        "other-split/a.grp/1": b"not a wanted split",
    }
    archive = write_tar(tmp_path / "a.tar", files, [member(f"{TRAIN}/a.grp", tarfile.DIRTYPE)], mode=mode)
    messages = read_messages(archive, SPLITS)
    assert messages == [
        Message(TEST, "a.grp", "5", b"test five"),
        Message(TRAIN, "a.grp", "3", b"three"),  # article numbers sort as numbers
        Message(TRAIN, "a.grp", "10", b"ten"),
        Message(TRAIN, "b.grp", "20", b"caf\xe9 na\xefve\r\n\x00binary"),
    ]
    keys = [(m.split, m.group, article_order(m.name)) for m in messages]
    assert keys == sorted(keys)


def test_article_order_sorts_numbers_as_numbers_and_text_as_text() -> None:
    names = ["10000", "9999", "a10", "a9", "01", "1", "b", "2.5", "2.10"]
    assert sorted(names, key=article_order) == ["01", "1", "2.5", "2.10", "9999", "10000", "a9", "a10", "b"]


def test_tiny_archive_reads_every_message(tiny_archive) -> None:
    archive, _ = tiny_archive
    messages = read_messages(archive, SPLITS)
    assert sum(m.split == TRAIN for m in messages) == 48
    assert sum(m.split == TEST for m in messages) == 18
    assert {m.group for m in messages} == {"rec.boats", "sci.orbits", "talk.bread"}
    assert all(b"caf\xe9" in m.raw for m in messages)


def test_bytes_decode_as_utf8_and_fall_back_to_latin1_without_error() -> None:
    assert decode("caf\u00e9 \u6771\u4eac".encode()) == ("caf\u00e9 \u6771\u4eac", False)
    with pytest.raises(UnicodeDecodeError):
        b"caf\xe9".decode("utf-8")  # why a fallback is needed ...
    assert decode(b"caf\xe9") == ("caf\u00e9", True)  # ... and counted
    every_byte = bytes(range(256))
    for encoding, fell_back in (("utf-8", True), ("latin-1", False)):
        text, fallback = decode(every_byte, encoding)
        assert len(text) == 256 and text.encode("latin-1") == every_byte and fallback is fell_back


# --- text cleaning (scikit-learn's 20newsgroups remove=) ---------------------------------

MESSAGE = (
    "From: alice@example.org\n"
    "Subject: boats\n"
    "Lines: 9\n"
    "\n"
    "In article <1@example.org> bob@example.org writes:\n"
    "> sails are overrated\n"
    "| also quoted\n"
    "I disagree strongly.\n"
    "\n"
    "Hulls matter too.\n"
    "--\n"
    "Alice, signature line\n"
)


def test_strip_headers_drops_the_block_before_the_first_blank_line() -> None:
    body = strip_headers(MESSAGE)
    assert body.startswith("In article <1@example.org>")
    assert "Subject" not in body and "From:" not in body
    assert "Hulls matter too." in body  # later blank lines are kept


def test_strip_quotes_drops_quoted_and_attribution_lines() -> None:
    stripped = strip_quotes(MESSAGE)
    assert "sails are overrated" not in stripped
    assert "also quoted" not in stripped
    assert "writes:" not in stripped
    assert "I disagree strongly." in stripped
    assert "Subject: boats" in stripped
    assert strip_quotes("Bob wrote:\nkeep\n  > indented is kept") == "keep\n  > indented is kept"


def test_strip_footer_drops_everything_after_the_last_dash_line() -> None:
    stripped = strip_footer(MESSAGE)
    assert "signature" not in stripped
    assert stripped.endswith("Hulls matter too.")
    assert strip_footer("body\n----------\nsig\n") == "body"
    assert strip_footer("no signature at all") == "no signature at all"
    assert strip_footer("--\nonly a footer") == "--\nonly a footer"  # line 0: nothing kept, so text kept


def test_clean_with_nothing_removed_is_identity() -> None:
    assert clean(MESSAGE, []) == MESSAGE


def test_clean_all_three() -> None:
    cleaned = clean(MESSAGE, ["headers", "footers", "quotes"])
    assert cleaned == "I disagree strongly.\n\nHulls matter too."


@pytest.fixture
def sklearn_twenty():
    """scikit-learn's own strip functions, the reference (skipped where it is not installed)."""
    return pytest.importorskip("sklearn.datasets._twenty_newsgroups", reason="scikit-learn not installed")


SAMPLES = [
    MESSAGE,
    "Subject: x\n\nbody\n\nmore\n\n\n",
    "Subject: x\n\nbody\n--\nsig one\n--\nsig two\n",
    "Subject: x\n\nIn article <a> b writes:\n> q\n>> qq\nQuoted from someone\nreal\n",
    "Subject: x\n\nbody with trailing dash line\n-----\n",
    "Subject: y\n\nwho says: hi\nwho said: bye\nkept\n",
]


@pytest.mark.parametrize("sample", range(len(SAMPLES)))
@pytest.mark.parametrize(
    "remove", [["headers"], ["footers"], ["quotes"], ["headers", "footers", "quotes"]], ids="+".join
)
def test_clean_matches_scikit_learn(sklearn_twenty, sample: int, remove: list[str]) -> None:
    text = SAMPLES[sample]
    expected = text
    if "headers" in remove:
        expected = sklearn_twenty.strip_newsgroup_header(expected)
    if "footers" in remove:
        expected = sklearn_twenty.strip_newsgroup_footer(expected)
    if "quotes" in remove:
        expected = sklearn_twenty.strip_newsgroup_quoting(expected)
    assert clean(text, remove) == expected


@pytest.mark.parametrize("text", ["body line\n-- \nJohn, sig", "body\n\nmore body\n   \nsig"])
def test_strip_footer_treats_dash_space_and_blank_lines_like_scikit_learn(sklearn_twenty, text: str) -> None:
    assert strip_footer(text) == sklearn_twenty.strip_newsgroup_footer(text)


# --- tokenizer ---------------------------------------------------------------------------


def test_default_tokenizer_lowercases_and_drops_single_characters() -> None:
    tokenize = Tokenizer(DEFAULT_PATTERN, lowercase=True)
    assert tokenize("The QUICK brown-fox, a I x2 42 _ café naïve") == [
        "the",
        "quick",
        "brown",
        "fox",
        "x2",
        "42",
        "café",
        "naïve",
    ]


def test_tokenizer_without_lowercase_keeps_case() -> None:
    assert Tokenizer(DEFAULT_PATTERN, lowercase=False)("Hello World") == ["Hello", "World"]


def test_tokenizer_matches_scikit_learn() -> None:
    text_module = pytest.importorskip("sklearn.feature_extraction.text")
    analyzer = text_module.CountVectorizer(token_pattern=DEFAULT_PATTERN, lowercase=True).build_analyzer()
    sample, _ = decode(b"Re: CAF\xc9 au lait -- it's 2 good_stuff!! e-mail x@y.org", "latin-1")
    assert Tokenizer(DEFAULT_PATTERN, lowercase=True)(sample) == analyzer(sample)


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*oops"])
def test_invalid_token_pattern_names_the_setting(pattern: str) -> None:
    with pytest.raises(TextclfError, match=r"encoder\.token_pattern"):
        Tokenizer(pattern, lowercase=True)


# --- limits and other formats ------------------------------------------------------------

BOMB_MEMBER = f"{TRAIN}/g.one/bomb"
BOMB = {**BASE, BOMB_MEMBER: bytes(64 * 1024)}  # 64 KiB of zeros: a few hundred bytes gzipped


def assert_one_line_and_nothing_written(caught: pytest.ExceptionInfo, directory: Path, before: set[str]) -> str:
    message = str(caught.value)
    assert "\n" not in message
    assert set(os.listdir(directory)) == before
    return message


def test_a_member_over_the_document_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "bomb.tar.gz", BOMB)
    assert archive.stat().st_size < 2048  # the bomb is small; its member is not
    before = set(os.listdir(tmp_path))
    with pytest.raises(TextclfError) as caught:
        read_messages(archive, SPLITS, max_document_bytes=1024)
    message = assert_one_line_and_nothing_written(caught, tmp_path, before)
    assert f"member '{BOMB_MEMBER}' is 65536 bytes" in message
    assert "data.max_document_bytes=1024" in message and str(archive) in message
    assert len(read_messages(archive, SPLITS, max_document_bytes=65536)) == 3  # at the limit: read


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_more_decompressed_bytes_than_the_archive_limit_stop_the_read(tmp_path: Path, mode: str) -> None:
    archive = write_tar(tmp_path / "bomb.tar", BOMB, mode=mode)
    before = set(os.listdir(tmp_path))
    with pytest.raises(TextclfError) as caught:
        read_messages(archive, SPLITS, max_archive_bytes=16 * 1024)
    message = assert_one_line_and_nothing_written(caught, tmp_path, before)
    assert message == (
        f"{archive}: decompresses to more than data.max_archive_bytes=16384 bytes; "
        "raise data.max_archive_bytes, or set it to null for no limit, if this archive is trusted"
    )
    # Counted over everything read, not only the members kept: a bomb outside the splits too.
    elsewhere = write_tar(tmp_path / "elsewhere.tar", {**BASE, "other/zeros": bytes(64 * 1024)}, mode=mode)
    with pytest.raises(TextclfError, match="data.max_archive_bytes=16384"):
        read_messages(elsewhere, SPLITS, max_archive_bytes=16 * 1024)


def test_a_huge_pax_header_is_refused_as_corrupt(tmp_path: Path) -> None:
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{TRAIN}/g.one/1")
        info.pax_headers = {"comment": "x" * (2 << 20)}  # 2 MiB, read whole by tarfile
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(TextclfError) as caught:
        read_messages(archive, SPLITS)
    assert "\n" not in str(caught.value) and "metadata header" in str(caught.value)


def test_a_zip_file_is_named_as_a_zip(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "20news-bydate.tar.gz"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, payload in BASE.items():
            zipped.writestr(name, payload)
    with pytest.raises(TextclfError) as caught:
        read_messages(archive, SPLITS)
    assert str(caught.value) == f"{archive}: is a zip file, not a tar archive (repack it as .tar.gz)"
