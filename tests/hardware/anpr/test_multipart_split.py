"""The bytes-level multipart splitter and the secret comparison, on generated hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.errors import PayloadError
from gated.hardware.anpr_formats import MAX_PARTS, _split_multipart
from gated.hardware.anpr_http import _same
from tests.hardware.anpr.conftest import multipart

# No backslash: the stdlib parameter parser the splitter uses reads a quoted name ending
# in one ("x\\") as an escaped closing quote, however the sender escapes it.
names = st.text(
    st.characters(min_codepoint=48, max_codepoint=122, exclude_characters="\\"),
    min_size=1,
    max_size=12,
)
part = st.tuples(
    names,
    st.one_of(st.just(""), names),
    st.just("application/octet-stream"),
    st.binary(max_size=300),
)


@given(st.lists(part, min_size=1, max_size=MAX_PARTS))
def test_split_returns_every_part_byte_for_byte(parts: list[tuple[str, str, str, bytes]]) -> None:
    body, ctype = multipart(parts, boundary="gated-b0undary-91c2")
    split = _split_multipart(body, ctype)
    assert [(p.name, p.filename, p.data) for p in split] == [(n, f, d) for n, f, _, d in parts]


@given(st.lists(part, min_size=1, max_size=4), st.integers(min_value=0), st.binary(max_size=20))
def test_cut_or_spliced_bodies_only_raise_payload_error(
    parts: list[tuple[str, str, str, bytes]], at: int, junk: bytes
) -> None:
    body, ctype = multipart(parts, boundary="gated-b0undary-91c2")
    cut = at % (len(body) + 1)
    for candidate in (body[:cut], body[:cut] + junk + body[cut:], junk + body):
        with contextlib.suppress(PayloadError):
            _split_multipart(candidate, ctype)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_raise_payload_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        _split_multipart(b"--b\r\n" + data, "multipart/form-data; boundary=b")


def test_too_many_parts_is_refused_before_splitting() -> None:
    body, ctype = multipart([("p", "", "text/plain", b"x")] * (MAX_PARTS + 1))
    with pytest.raises(PayloadError, match="more than"):
        _split_multipart(body, ctype)


@given(st.text(), st.text(min_size=1))
def test_secret_comparison_never_raises(given_value: str, expected: str) -> None:
    # headers that are not UTF-8 arrive as lone surrogates: they compare, unequal
    assert _same(given_value + "\udcff", expected) is False
    assert _same(expected, expected) is True
