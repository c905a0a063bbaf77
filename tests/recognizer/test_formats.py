"""Plate formats and the choice of a plate among OCR candidates (recognizer.formats)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.hardware.recognizer.formats import (
    FORMATS,
    PLATE_ALPHABET,
    REGIONS,
    fits_format,
    match_plate,
)


def sure(text: str) -> list[list[tuple[str, float]]]:
    """An OCR read of text with every character certain; " " and "-" are separators."""
    return [[] if c in " -" else [(c, 0.99)] for c in text]


@pytest.mark.parametrize(
    ("shown", "plate", "region"),
    [
        ("AB12 CDE", "AB12CDE", "uk"),
        ("B-AB 1234", "BAB1234", "de"),
        ("AB-123-CD", "AB123CD", "fr"),
        ("1234 BCD", "1234BCD", "es"),
        ("12-BCD-3", "12BCD3", "nl"),
        ("7ABC123", "7ABC123", "us"),
    ],
)
def test_a_plate_read_with_its_gaps_is_that_regions(shown: str, plate: str, region: str) -> None:
    found = match_plate(sure(shown))
    assert found is not None
    assert (found.text, found.region) == (plate, region)
    assert found.confidence == pytest.approx(0.99)


@pytest.mark.parametrize(
    "text",
    ["YOUR DEALER", "EXIT", "AUTO SALES", "MOTORS", "GATE2", "BAY 14", "MAX 10 KM/H", "24/7",
     "CALL 555 0199", "WWW.MOTORS.NET", "", "AB12CDEFG"],
)  # fmt: skip
def test_sign_and_sticker_text_is_no_plate(text: str) -> None:
    assert match_plate(sure(text)) is None


def test_a_plate_needs_the_gaps_its_series_prints() -> None:
    # "GATE 2" has no gap inside GATE, and a UK plate prints one before its last three letters
    assert match_plate(sure("GATE 2")) is None
    assert match_plate(sure("AB12CDE")) is None
    assert match_plate(sure("AB12 CDE")).text == "AB12CDE"


def test_look_alikes_follow_the_formats_letter_and_digit_places() -> None:
    # the OCR's best guesses: 8 in a letter place, O in a digit place
    read = [[("A", 0.99)], [("8", 0.95)], [("1", 0.97)], [("O", 0.96)], [], [("C", 0.99)],
            [("D", 0.9)], [("E", 0.99)]]  # fmt: skip
    found = match_plate(read, ["uk"])
    assert found is not None and found.text == "AB10CDE"
    assert found.confidence < 0.9  # each swap costs
    # three swaps make a word, not a misread plate ("MOTORS" is no "MO70RS")
    read[2], read[6] = [("I", 0.97)], [("0", 0.9)]
    assert match_plate(read, ["uk"]) is None


def test_a_runner_up_candidate_beats_a_look_alike() -> None:
    read = [*sure("AB12 CD"), [("8", 0.55), ("E", 0.4)]]
    found = match_plate(read, ["uk"])
    assert found is not None and found.text == "AB12CDE"


def test_two_fitting_characters_the_ocr_cannot_tell_apart_make_no_plate() -> None:
    unsure = [*sure("ON-741-"), [("W", 0.41), ("N", 0.3)], [("H", 0.99)]]
    assert match_plate(unsure, ["fr"]) is None
    # the same characters read with certainty are a plate
    assert match_plate(sure("ON-741-NH"), ["fr"]).text == "ON741NH"


def test_a_country_band_code_before_the_plate_is_dropped() -> None:
    found = match_plate(sure("FQQ-535-VN"))
    assert found is not None and (found.text, found.region) == ("QQ535VN", "fr")
    found = match_plate(sure("NL 12-BCD-3"))
    assert found is not None and found.text == "12BCD3"


def test_regions_limit_the_formats() -> None:
    assert match_plate(sure("AB-123-CD"), ["uk"]) is None
    assert match_plate(sure("AB-123-CD"), ["fr"]).region == "fr"
    assert fits_format("AB12CDE", ["uk"]) == "uk"
    assert fits_format("AB12CDE", ["us"]) is None


def test_spanish_plates_carry_no_vowels() -> None:
    assert match_plate(sure("1234 BCD"), ["es"]) is not None
    assert match_plate(sure("1234 BAD"), ["es"]) is None


def test_dutch_and_british_plates_lack_the_letters_their_series_never_issue() -> None:
    # a speed sign half hidden behind a car has a Dutch sidecode's shape, and a vowel
    assert match_plate(sure("MAX 10 K")) is None
    assert match_plate(sure("MBX 10 K")).region == "nl"
    # no British plate has an I or a Q: "1059 YVP" is Spanish, never "IO59 YVP"
    found = match_plate(sure("1059 YVP"))
    assert found is not None and (found.text, found.region) == ("1059YVP", "es")
    assert match_plate(sure("IO59 YVP"), ["uk"]) is None
    assert match_plate(sure("OO59 YVP"), ["uk"]).text == "OO59YVP"


def test_a_line_two_plates_fit_nearly_as_well_is_no_plate() -> None:
    # J or 3: the British "JO59 YVP" or the Spanish "3059 YVP", the OCR cannot say
    unsure = [[("J", 0.5), ("3", 0.48)], [("O", 0.5), ("0", 0.49)], *sure("59 YVP")]
    assert match_plate(unsure) is None
    assert match_plate(unsure, ["uk"]).text == "JO59YVP"
    sure_j = [[("J", 0.95), ("3", 0.04)], [("O", 0.95), ("0", 0.04)], *sure("59 YVP")]
    assert match_plate(sure_j).text == "JO59YVP"


def test_a_weak_best_with_a_close_runner_up_of_its_class_is_no_plate() -> None:
    # S 0.60 or B 0.35: a US "BTR 0722" once read as "STR 0722"
    unsure = [[("S", 0.6), ("B", 0.35)], *sure("TR 0722")]
    assert match_plate(unsure, ["us"]) is None
    assert match_plate([[("S", 0.9), ("B", 0.05)], *sure("TR 0722")], ["us"]).text == "STR0722"


_position = st.lists(
    st.tuples(st.text(max_size=3), st.floats(allow_nan=True, allow_infinity=True)), max_size=4
)


@settings(max_examples=400, deadline=None)
@given(
    read=st.lists(_position, max_size=14),
    regions=st.lists(st.sampled_from([*REGIONS, "xx"]), max_size=3),
)
def test_the_matcher_never_raises_and_returns_only_plates(read: list, regions: list[str]) -> None:
    found = match_plate(read, regions)
    if found is not None:
        assert found.text and set(found.text) <= PLATE_ALPHABET
        assert fits_format(found.text, [found.region]) == found.region
        assert 0.0 <= found.confidence <= 1.0
        assert len(found.chars) == len(found.text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted({(t, r) for r in REGIONS for t in FORMATS[r]})), st.randoms())
def test_every_template_reads_back_a_plate_of_its_shape(template_region, rnd) -> None:
    template, region = template_region
    letters = "BCDFGHJKMNPRTVWXYZ"  # no vowels (Spain), no look-alikes
    text = "".join(
        c if c in "|!" else rnd.choice(letters if c == "L" else "3479") for c in template
    )
    shown = text.replace("|", " ").replace("!", " ")
    found = match_plate(sure(shown), [region])
    assert found is not None and found.text == shown.replace(" ", "")
