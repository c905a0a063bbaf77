"""Plate normalisation, confusion keys, format checks, bounded edit distance and edits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated import plates as plates_module
from gated.errors import PayloadError
from gated.model import Edit
from gated.plates import (
    CONFUSION_CLASSES,
    MAX_TEXT_LEN,
    confusion_key,
    distance,
    edits,
    new_edit,
    normalise,
    plate_matches_format,
)

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
plates = st.text(alphabet=ALNUM, min_size=1, max_size=10)


def levenshtein(a: str, b: str) -> int:
    """Reference full-table Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j - 1] + (ca != cb), prev[j] + 1, cur[j - 1] + 1))
        prev = cur
    return prev[-1]


def apply_edits(read: str, changes: tuple[Edit, ...]) -> str:
    """Turn `read` into the stored text by applying edits (positions index the read)."""
    out = []
    by_pos: dict[int, list[Edit]] = {}
    for e in changes:
        by_pos.setdefault(e.position, []).append(e)
    for i in range(len(read) + 1):
        consumed = False
        for e in by_pos.get(i, []):
            if e.op == "del":
                out.append(e.stored)
            elif e.op == "sub":
                assert read[i] == e.read
                out.append(e.stored)
                consumed = True
            elif e.op == "ins":
                assert read[i] == e.read
                consumed = True
        if i < len(read) and not consumed:
            out.append(read[i])
    return "".join(out)


# --- normalise ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ab-12-cd", "AB12CD"),
        ("AB 12 CD", "AB12CD"),
        ("ab.12.cd", "AB12CD"),
        ("AB·12·CD", "AB12CD"),  # middle dot
        ("AB/12\\CD", "AB12CD"),
        ("  xy_99\tz\n", "XY99Z"),
        ("\uff21\uff22\uff11\uff12", "AB12"),  # fullwidth A B 1 2
        ("\u0430\u0412-12-\u0441\u0435", "AB12CE"),  # Cyrillic a, VE, es, ie
        ("\u0391\u0392\u0395\u0396\u0397\u039a", "ABEZHK"),  # Greek capitals
        ("\u03bf\u03c1", "OP"),  # Greek small omicron, rho
        ("Öffi-Ä1", "OFFIA1"),  # diacritics folded
        ("ÉÈÊË ÇÑ", "EEEECN"),
        ("Ø1Ł2Đ3", "O1L2D3"),  # letters with a stroke
        ("æ1œ2ß", "AE1OE2SS"),
        ("\ufb01\ufb02", "FIFL"),  # fi, fl ligatures
        ("\u2460\u2461", "12"),  # circled digits
        ("\u0663\u0968", "32"),  # Arabic-Indic three, Devanagari two
        ("🚗AB12", "AB12"),
        ("", ""),
        ("---", ""),
        ("\x00AB\x0012", "AB12"),
    ],
)
def test_normalise_table(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@given(st.text(max_size=MAX_TEXT_LEN))
def test_normalise_is_idempotent_and_ascii_alnum(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert all(c in ALNUM for c in once)


@pytest.mark.parametrize("bad", [None, 123, b"AB12", ["AB"]])
def test_normalise_rejects_non_strings(bad: object) -> None:
    with pytest.raises(PayloadError, match="string"):
        normalise(bad)  # type: ignore[arg-type]


def test_normalise_rejects_oversized_text() -> None:
    with pytest.raises(PayloadError, match="characters"):
        normalise("A" * (MAX_TEXT_LEN + 1))
    assert normalise("A" * MAX_TEXT_LEN) == "A" * MAX_TEXT_LEN


# --- confusion keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0", "O"),
        ("O", "D"),
        ("D", "Q"),
        ("1", "I"),
        ("I", "L"),
        ("7", "T"),
        ("2", "Z"),
        ("4", "A"),
        ("5", "S"),
        ("6", "G"),
        ("8", "B"),
        ("AB12CDE", "4812CDE"),
        ("SO1OZ", "50IQ2"),
    ],
)
def test_confusable_characters_share_a_key(a: str, b: str) -> None:
    assert confusion_key(a) == confusion_key(b)


@pytest.mark.parametrize(("a", "b"), [("U", "V"), ("M", "N"), ("1", "7"), ("E", "F"), ("8", "0")])
def test_distinct_characters_keep_distinct_keys(a: str, b: str) -> None:
    assert confusion_key(a) != confusion_key(b)


def test_confusion_classes_are_disjoint_and_map_to_their_first_member() -> None:
    seen: set[str] = set()
    for cls in CONFUSION_CLASSES:
        assert not seen & set(cls)
        seen |= set(cls)
        assert {confusion_key(c) for c in cls} == {cls[0]}


@given(plates)
def test_confusion_key_is_idempotent_and_length_preserving(plate: str) -> None:
    key = confusion_key(plate)
    assert confusion_key(key) == key
    assert len(key) == len(plate)


# --- formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plate", "patterns", "ok"),
    [
        ("AB12CDE", [], True),
        ("AB12CDE", [r"[A-Z]{2}[0-9]{2}[A-Z]{3}"], True),
        ("AB12CDEX", [r"[A-Z]{2}[0-9]{2}[A-Z]{3}"], False),  # full match, not search
        ("12ABC3", [r"[A-Z]{2}[0-9]{2}[A-Z]{3}", r"[0-9]{2}[A-Z]{3}[0-9]"], True),
        ("", [r"[A-Z]+"], False),
    ],
)
def test_plate_matches_format(plate: str, patterns: list[str], ok: bool) -> None:
    assert plate_matches_format(plate, patterns) is ok


# --- distance and edits --------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "k", "expected"),
    [
        ("AB12CDE", "AB12CDE", 0, 0),
        ("AB12CDE", "AB12CDF", 0, None),
        ("AB12CDE", "AB12CDF", 1, 1),
        ("AB12CDE", "AB12CD", 1, 1),
        ("AB12CDE", "XAB12CDE", 1, 1),
        ("AB12CDE", "BA12CDE", 1, None),  # a transposition is two edits (Levenshtein, not OSA)
        ("AB12CDE", "BA12CDE", 2, 2),
        ("AB12CDE", "AB1CDEX", 2, 2),
        ("AB12CDE", "XY12CDE", 1, None),
        ("ABC", "ABCDEF", 2, None),  # length difference alone exceeds the bound
        ("", "AB", 2, 2),
        ("", "", 0, 0),
    ],
)
def test_distance_table(a: str, b: str, k: int, expected: int | None) -> None:
    assert distance(a, b, k) == expected
    assert distance(b, a, k) == expected


@settings(max_examples=300)
@given(plates, plates, st.integers(min_value=0, max_value=3))
def test_distance_agrees_with_reference(a: str, b: str, k: int) -> None:
    ref = levenshtein(a, b)
    assert distance(a, b, k) == (ref if ref <= k else None)


@pytest.mark.parametrize(
    ("read", "stored", "expected"),
    [
        ("AB12CDE", "AB12CDE", ()),
        ("AB12CDF", "AB12CDE", (Edit("sub", 6, "F", "E"),)),
        ("AB12CD", "AB12CDE", (Edit("del", 6, "", "E"),)),
        ("XAB12CDE", "AB12CDE", (Edit("ins", 0, "X", ""),)),
        ("A812CDE", "AB12CDE", (Edit("sub", 1, "8", "B"),)),
        # shifted plates: the camera dropped the first character and invented a last one,
        # one insertion and one deletion, never a substitution at every position
        ("ABC", "BCD", (Edit("ins", 0, "A", ""), Edit("del", 3, "", "D"))),
        ("BCD", "ABC", (Edit("del", 0, "", "A"), Edit("ins", 2, "D", ""))),
        ("XAB12CD", "AB12CDE", (Edit("ins", 0, "X", ""), Edit("del", 7, "", "E"))),
        # a tie between one substitution and ins+del: substitutions are preferred
        ("AB12CDX", "AB12CDE", (Edit("sub", 6, "X", "E"),)),
        ("KX55PRM", "", tuple(Edit("ins", i, c, "") for i, c in enumerate("KX55PRM"))),
        ("", "AB1", (Edit("del", 0, "", "A"), Edit("del", 0, "", "B"), Edit("del", 0, "", "1"))),
        ("AB12", "AB99", (Edit("sub", 2, "1", "9"), Edit("sub", 3, "2", "9"))),
    ],
)
def test_edits_table(read: str, stored: str, expected: tuple[Edit, ...]) -> None:
    assert edits(read, stored) == expected


@settings(max_examples=300)
@given(plates, plates)
def test_edits_are_minimal_and_reproduce_the_stored_plate(read: str, stored: str) -> None:
    changes = edits(read, stored)
    assert len(changes) == levenshtein(read, stored)
    assert apply_edits(read, changes) == stored
    for e in changes:
        assert e.op in {"sub", "ins", "del"}
        assert 0 <= e.position <= len(read)


# Every pair of short strings over a small alphabet: shifted, repeated and reordered
# characters (where substitutions alone are not minimal) come up far more often than
# in random plates over all 36 characters.
SMALL = ["".join(p) for n in range(5) for p in itertools.product("AB1", repeat=n)]


def test_edits_are_minimal_for_every_short_pair() -> None:
    wrong = []
    for read, stored in itertools.product(SMALL, SMALL):
        changes = edits(read, stored)
        if len(changes) != levenshtein(read, stored) or apply_edits(read, changes) != stored:
            wrong.append((read, stored, changes))
    assert wrong == []


@settings(max_examples=300)
@given(plates, st.integers(min_value=1, max_value=3), plates)
def test_edits_of_a_shifted_plate_are_minimal(plate: str, shift: int, tail: str) -> None:
    # the read lost its first characters and gained others at the end
    read = plate[shift:] + tail[:shift]
    changes = edits(read, plate)
    assert len(changes) == levenshtein(read, plate)
    assert apply_edits(read, changes) == plate


def test_edits_refuse_text_longer_than_any_plate() -> None:
    with pytest.raises(ValueError, match=r"^edits\(\) is for plate-sized strings$"):
        edits("A" * (MAX_TEXT_LEN + 1), "A")
    with pytest.raises(ValueError, match="plate-sized"):
        edits("A", "B" * (MAX_TEXT_LEN + 1))
    assert len(edits("A" * MAX_TEXT_LEN, "B" * MAX_TEXT_LEN)) == MAX_TEXT_LEN


def test_edits_are_made_by_the_fast_constructor_and_equal_plain_ones() -> None:
    # new_edit skips the frozen dataclass __init__ only while Edit has exactly these
    # slots; the check runs once at import, so it is tested here directly
    setters = plates_module._edit_setters()
    assert len(setters) == 4
    made = new_edit("sub", 3, "8", "B")
    assert made == Edit("sub", 3, "8", "B") and type(made) is Edit
    assert (made.op, made.position, made.read, made.stored) == ("sub", 3, "8", "B")


def test_normalise_names_the_type_it_refuses() -> None:
    with pytest.raises(PayloadError, match="must be a string, got bytes"):
        normalise(b"AB12CDE")  # type: ignore[arg-type]
