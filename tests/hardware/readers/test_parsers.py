"""Pure parsers of the serial readers: line splitting, RDM6300 frames, repeat suppression."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.errors import PayloadError
from gated.hardware.readers import (
    LineMatch,
    LineParser,
    Rdm6300Parser,
    RepeatFilter,
    TagFrame,
    encode_rdm6300_frame,
    parse_line,
    parse_rdm6300_frame,
)

DEFAULT = r"^(?P<text>[A-Za-z0-9 -]{2,16})$"
WITH_CONF = r"^PLATE=(?P<text>[A-Z0-9]+);CONF=(?P<confidence>[0-9.]+%?)$"

# --- RDM6300 -------------------------------------------------------------------

# The example frame of the RDM630/RDM6300 data sheet: data 62 E3 08 6C ED, checksum 08.
GOLDEN = b"\x02" + b"62E3086CED" + b"08" + b"\x03"
TAG = 0xE3086CED
# A card from the field: printed number 0006102349, i.e. tag bytes 00 5D 1D 4D, version 13.
FIELD = b"\x02" + b"13005D1D4D" + b"1E" + b"\x03"


def test_golden_frame_checksum_matches_xor_of_data_bytes() -> None:
    assert 0x62 ^ 0xE3 ^ 0x08 ^ 0x6C ^ 0xED == 0x08
    frame = parse_rdm6300_frame(GOLDEN)
    assert frame == TagFrame(version=0x62, tag=TAG)
    assert frame.text == "3808980205"
    assert frame.hex == "62E3086CED"


def test_short_tag_numbers_are_zero_padded_to_ten_digits() -> None:
    frame = parse_rdm6300_frame(FIELD)
    assert frame.text == "0006102349"
    assert frame.version == 0x13


def test_encode_round_trips_and_matches_golden() -> None:
    assert encode_rdm6300_frame(0x62, TAG) == GOLDEN
    assert parse_rdm6300_frame(encode_rdm6300_frame(0xFF, 0xFFFFFFFF)).tag == 0xFFFFFFFF


def test_lower_case_hex_is_accepted() -> None:
    assert parse_rdm6300_frame(GOLDEN.lower()).tag == TAG


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (GOLDEN[:-1] + b"\x04", "STX"),
        (GOLDEN[:5] + b"\x03", "bytes"),
        (b"\x02" + b"62E3086CED" + b"80" + b"\x03", "checksum"),
        (b"\x02" + b"62E3086CEG" + b"08" + b"\x03", "non-hex"),
        (b"", "bytes"),
    ],
)
def test_bad_frames_raise_payload_error(frame: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_rdm6300_frame(frame)


def test_stream_parser_reads_frames_split_anywhere() -> None:
    stream = GOLDEN + encode_rdm6300_frame(1, 2) + GOLDEN
    for cut in range(len(stream) + 1):
        p = Rdm6300Parser()
        got = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert [f.tag for f in got] == [TAG, 2, TAG]
        assert not p.dropped


def test_stream_parser_resynchronises_after_garbage_and_truncation() -> None:
    p = Rdm6300Parser()
    stream = b"\xff\x00noise" + GOLDEN[:7] + GOLDEN + b"\r\n" + GOLDEN[:-1] + b"X" + GOLDEN
    got = p.feed(stream)
    assert [f.tag for f in got] == [TAG, TAG]
    assert p.dropped["truncated"] == 1
    assert p.dropped["malformed"] == 1
    assert p.dropped["garbage_bytes"] == len(b"\xff\x00noise")


def test_stream_parser_counts_checksum_errors() -> None:
    bad = b"\x02" + b"62E3086CED" + b"09" + b"\x03"
    p = Rdm6300Parser()
    assert p.feed(bad + GOLDEN) == [TagFrame(0x62, TAG)]
    assert p.dropped["bad_checksum"] == 1


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_never_crash_nor_yield_a_bad_checksum(data: bytes, cuts: list[int]) -> None:
    p = Rdm6300Parser()
    got: list[TagFrame] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        got += p.feed(data[last:cut])
        last = max(last, cut)
    for frame in got:
        encoded = encode_rdm6300_frame(frame.version, frame.tag)
        # every reported frame was really in the input, checksum and all
        assert encoded[1:-1].lower() in data.lower()


CARDS = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1)), max_size=8)


@given(CARDS, st.binary(max_size=30))
def test_valid_frames_survive_interleaved_noise_without_stx(
    cards: list[tuple[int, int]], noise: bytes
) -> None:
    noise = noise.replace(b"\x02", b"")
    stream = b"".join(noise + encode_rdm6300_frame(v, t) for v, t in cards)
    assert [(f.version, f.tag) for f in Rdm6300Parser().feed(stream)] == cards


def test_repeat_filter_suppresses_a_held_card_and_accepts_it_after_a_pause() -> None:
    f = RepeatFilter(window_s=1.0)
    seen = [f.accept("A", t) for t in (0.0, 0.1, 0.2, 0.9, 1.8)]  # held: repeats every < 1 s
    assert seen == [True, False, False, False, False]
    assert f.accept("A", 3.0) is True  # taken away and presented again
    assert f.accept("B", 3.1) is True  # a different card is never a repeat
    assert f.accept("A", 3.2) is True


# --- line readers -----------------------------------------------------------------


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"])
def test_lines_with_any_terminator(terminator: bytes) -> None:
    p = LineParser(DEFAULT)
    got = p.feed(b"AB-123-C" + terminator + b"XY99ZZ" + terminator)
    assert got == [LineMatch("AB-123-C"), LineMatch("XY99ZZ")]
    assert not p.dropped


def test_line_split_across_feeds() -> None:
    p = LineParser(DEFAULT)
    assert p.feed(b"AB1") == []
    assert p.feed(b"23CD\r") == [LineMatch("AB123CD")]
    assert p.feed(b"\n") == []  # the LF of the CRLF is not an empty line


def test_confidence_group_as_fraction_and_percent() -> None:
    p = LineParser(WITH_CONF)
    got = p.feed(b"PLATE=AB123;CONF=0.91\nPLATE=CD456;CONF=87%\nPLATE=EF789;CONF=75\n")
    assert got == [LineMatch("AB123", 0.91), LineMatch("CD456", 0.87), LineMatch("EF789", 0.75)]


def test_bad_confidence_is_dropped_and_counted() -> None:
    p = LineParser(WITH_CONF)
    assert p.feed(b"PLATE=AB123;CONF=250\nPLATE=AB123;CONF=...\n") == []
    assert p.dropped["bad_confidence"] == 2


def test_over_long_line_is_dropped_to_the_next_terminator() -> None:
    p = LineParser(DEFAULT, max_line=16)
    got = p.feed(b"X" * 40 + b"AB12\n" + b"CD34\n")
    assert got == [LineMatch("CD34")]
    assert p.dropped["line_too_long"] == 1


def test_non_utf8_and_non_matching_lines_are_counted() -> None:
    p = LineParser(DEFAULT)
    got = p.feed(b"AB\xff\xfe12\n!!!\nOK12\n")
    assert got == [LineMatch("OK12")]
    assert p.dropped["not_utf8"] == 1
    assert p.dropped["no_match"] == 1


def test_parse_line_errors_are_clear() -> None:
    pattern = re.compile(DEFAULT)
    with pytest.raises(PayloadError, match="UTF-8"):
        parse_line(b"\xc3(", pattern)
    with pytest.raises(PayloadError, match="does not match"):
        parse_line(b"?", pattern)


def test_pattern_without_text_group_is_refused() -> None:
    with pytest.raises(ValueError, match="text"):
        LineParser(r"(?P<plate>\w+)")


@given(st.binary(max_size=600), st.integers(1, 64))
def test_random_bytes_never_crash_the_line_parser(data: bytes, max_line: int) -> None:
    p = LineParser(DEFAULT, max_line=max_line)
    for m in p.feed(data):
        assert 2 <= len(m.text) <= min(16, max_line)
        assert m.text.encode() in data
