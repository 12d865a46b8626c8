"""The on-disk and S3 layouts (docs/SPEC.md §2, §3, §6): pure functions, no reactor."""

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stor.core import layout
from stor.core.sha import parse_sha, sha_of_path
from stor.core.errors import MalformedSha

# docs/data-layout.rst's worked example: 557a65…d16e.
EXAMPLE = "557a65" + "0123456789abcdef" * 3 + "89abcd" + "d16e"
EXAMPLE_UPPER = EXAMPLE.upper()

HEX = string.digits + "abcdefABCDEF"


def is_sha(text: str) -> bool:
    """The rule, stated independently of the code: exactly 64 ASCII hex digits."""
    return len(text) == 64 and all(c in HEX for c in text)


shas = st.text(alphabet=HEX, min_size=64, max_size=64)


def test_example_is_well_formed() -> None:
    assert len(EXAMPLE) == 64 and EXAMPLE.startswith("557a65") and EXAMPLE.endswith("d16e")


def test_worked_example_path() -> None:
    expected = f"/mnt/data1/55/7A/65/{EXAMPLE_UPPER}.dat"
    assert layout.file_path("/mnt/data1", parse_sha(EXAMPLE)) == expected
    assert expected.endswith("D16E.dat")


def test_relative_path_is_three_levels_of_upper_case_byte_pairs() -> None:
    assert layout.relative_path(EXAMPLE) == f"55/7A/65/{EXAMPLE_UPPER}.dat"


def test_storage_with_trailing_slash_gives_the_same_file() -> None:
    assert layout.file_path("/mnt/data1/", EXAMPLE) == layout.file_path("/mnt/data1", EXAMPLE)


@pytest.mark.parametrize("spelling", [EXAMPLE, EXAMPLE_UPPER, EXAMPLE[:32].upper() + EXAMPLE[32:]])
def test_any_case_is_normalised_to_lower(spelling: str) -> None:
    assert parse_sha(spelling) == EXAMPLE


@pytest.mark.parametrize("spelling", [EXAMPLE, EXAMPLE_UPPER, EXAMPLE.swapcase()])
def test_any_case_lands_on_the_same_file(spelling: str) -> None:
    path = layout.file_path("/s", parse_sha(spelling))
    assert path == f"/s/55/7A/65/{EXAMPLE_UPPER}.dat"


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param(EXAMPLE[:63], id="63-chars"),
        pytest.param(EXAMPLE + "0", id="65-chars"),
        pytest.param("", id="empty"),
        pytest.param(EXAMPLE[:63] + "g", id="non-hex-letter"),
        pytest.param(EXAMPLE[:63] + "\u0661", id="arabic-indic-digit"),
        pytest.param("\uff10" + EXAMPLE[1:], id="fullwidth-digit"),
        pytest.param(EXAMPLE[:32] + "/" + EXAMPLE[33:], id="slash-inside"),
        pytest.param("55/7A/65/" + EXAMPLE[:55], id="path-like"),
        pytest.param("../" + EXAMPLE[3:], id="dot-dot"),
        pytest.param(EXAMPLE + "\n", id="trailing-newline"),
        pytest.param(" " + EXAMPLE[1:], id="leading-space"),
        pytest.param(EXAMPLE[:63] + "\x00", id="nul"),
        pytest.param("0x" + EXAMPLE[2:], id="0x-prefix"),
        pytest.param(EXAMPLE + ".dat", id="with-suffix"),
    ],
)
def test_malformed_is_rejected(segment: str) -> None:
    with pytest.raises(MalformedSha):
        parse_sha(segment)


@given(shas)
def test_every_64_hex_string_parses_to_its_lower_case(text: str) -> None:
    assert parse_sha(text) == text.lower()


@given(
    st.one_of(
        st.text(),
        st.text(alphabet=HEX).filter(lambda s: len(s) != 64),
        # 64 characters, at least one of which is not an ASCII hex digit
        st.tuples(shas, st.integers(0, 63), st.characters().filter(lambda c: c not in HEX)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
        ),
    )
)
def test_anything_but_64_hex_digits_is_rejected(text: str) -> None:
    if is_sha(text):
        assert parse_sha(text) == text.lower()
    else:
        with pytest.raises(MalformedSha):
            parse_sha(text)


@given(shas)
def test_path_layout_property(text: str) -> None:
    sha = parse_sha(text)
    parts = layout.file_path("/st", sha).split("/")
    up = sha.upper()
    assert parts == ["", "st", up[0:2], up[2:4], up[4:6], up + ".dat"]


def test_s3_key_of_worked_example() -> None:
    assert layout.s3_key(EXAMPLE) == f"55/7a/65/{EXAMPLE}"


@given(shas)
def test_s3_key_is_lower_case_byte_pairs_without_suffix(text: str) -> None:
    low = text.lower()
    assert layout.s3_key(text) == f"{low[0:2]}/{low[2:4]}/{low[4:6]}/{low}"


@pytest.mark.parametrize(
    "storage, name",
    [
        ("/mnt/data1", "mnt-data1"),
        ("./var/data_1/", "var-data-1"),
        ("/mnt//data 2", "mnt-data-2"),
        ("/srv/stor.disk-03", "srv-stor-disk-03"),
        ("data1", "data1"),
        ("///", ""),
    ],
)
def test_server_name(storage: str, name: str) -> None:
    assert layout.server_name(storage) == name


ALNUM = string.ascii_letters + string.digits


@given(st.text())
def test_server_name_property(storage: str) -> None:
    name = layout.server_name(storage)
    # only ASCII alphanumeric runs joined by single dashes, nothing at either end
    assert re.fullmatch(r"([0-9A-Za-z]+(-[0-9A-Za-z]+)*)?", name)
    # the alphanumeric characters are kept, in order
    assert name.replace("-", "") == "".join(c for c in storage if c in ALNUM)
    # one dash per run of other characters between alphanumerics
    runs = re.findall(r"[0-9A-Za-z]+", storage)
    assert name == "-".join(runs)


@given(st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64))
def test_a_sha_path_names_its_sha_in_lower_case(text: str) -> None:
    assert sha_of_path(b"/" + text.encode()) == text.lower()


@pytest.mark.parametrize("path", [b"/", b"/" + b"a" * 63, b"/" + b"a" * 65, b"//" + b"a" * 64,
                                  b"/" + b"g" * 64, b"/" + b"a" * 63 + b"/"])
def test_anything_else_is_not_a_sha_path(path: bytes) -> None:
    assert sha_of_path(path) is None


def test_storage_of_inverts_file_path() -> None:
    sha = "ab" * 32
    assert layout.storage_of(layout.file_path("/mnt/data1", sha), sha) == "/mnt/data1"
    assert layout.storage_of("/mnt/data1/elsewhere.dat", sha) is None
