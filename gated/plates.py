"""Licence-plate text: normalisation, OCR-confusion keys, format checks, bounded edit distance.

Pure functions only: no IO, no clock. Everything a plate turns into here is a
string over A-Z0-9, so the index (`gated.rules.index`) can pack it into integers.

Distance is plain Levenshtein (substitution, insertion, deletion), not OSA:
an OCR engine reads characters left to right and fails by misreading,
dropping or inventing a character; it does not swap two neighbours. Counting
a transposition as one edit would only widen every fuzzy match (more false
opens) for an error the camera does not make.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from rapidfuzz.distance import Hamming, Levenshtein

from gated.errors import PayloadError
from gated.model import Edit

MAX_TEXT_LEN = 256  # raw text longer than this is hostile or garbage, never a plate or tag
MAX_PLATE_LEN = 16  # longest normalised plate gated indexes or matches (real ones stop at ~10)
MAX_TAG_LEN = 32  # longest normalised tag (a 96-bit UHF EPC is 24 hex digits)

_NOT_ALNUM = re.compile(r"[^A-Z0-9]+")

# Letters from other scripts that look like a Latin letter on a plate, by
# Unicode name (so the source shows which script each one is). Applied after
# NFKD + uppercasing, so lower-case and accented forms arrive here as these
# capitals. Only letter look-alikes: Cyrillic ZE or BE resemble digits, and no
# plate reader emits them for 3 or 6.
_CYRILLIC = {
    "A": "A", "VE": "B", "IE": "E", "KA": "K", "EM": "M", "EN": "H", "O": "O", "ER": "P",
    "ES": "C", "TE": "T", "HA": "X", "U": "Y", "STRAIGHT U": "Y", "DZE": "S",
    "BYELORUSSIAN-UKRAINIAN I": "I", "JE": "J", "QA": "Q", "WE": "W",
}  # fmt: skip
_GREEK = {
    "ALPHA": "A", "BETA": "B", "EPSILON": "E", "ZETA": "Z", "ETA": "H", "IOTA": "I",
    "KAPPA": "K", "MU": "M", "NU": "N", "OMICRON": "O", "RHO": "P", "TAU": "T",
    "UPSILON": "Y", "CHI": "X",
}  # fmt: skip
# Latin letters with a stroke, and ligatures, that NFKD does not decompose
_LATIN = {
    "LETTER O WITH STROKE": "O", "LETTER D WITH STROKE": "D", "LETTER ETH": "D",
    "LETTER L WITH STROKE": "L", "LETTER H WITH STROKE": "H", "LETTER T WITH STROKE": "T",
    "LETTER I WITH STROKE": "I", "LETTER AE": "AE", "LIGATURE OE": "OE", "LETTER SHARP S": "SS",
}  # fmt: skip
_HOMOGLYPHS = {
    **{unicodedata.lookup(f"CYRILLIC CAPITAL LETTER {n}"): v for n, v in _CYRILLIC.items()},
    **{unicodedata.lookup(f"GREEK CAPITAL LETTER {n}"): v for n, v in _GREEK.items()},
    **{unicodedata.lookup(f"LATIN CAPITAL {n}"): v for n, v in _LATIN.items()},
}

# OCR-confusion classes. Each class maps to one representative; a read and a
# stored plate with the same key differ only by these look-alike pairs:
#   0 O D Q   round shapes          1 I L   single vertical stroke
#   7 T       top bar over a stem   2 Z     4 A     5 S     6 G     8 B
# Kept to the pairs plate OCR is known to confuse: a confusion-key match opens
# a resident's gate like an exact one, so every extra pair widens what opens.
# Other near-misses (U/V, M/N, P/R, E/F …) are left to the bounded fuzzy match.
CONFUSION_CLASSES: tuple[str, ...] = ("0ODQ", "1IL", "7T", "2Z", "4A", "5S", "6G", "8B")
CONFUSION_TABLE = str.maketrans({c: cls[0] for cls in CONFUSION_CLASSES for c in cls[1:]})


def normalise(text: str) -> str:
    """Canonical plate/tag text: A-Z0-9 only, look-alikes and diacritics folded; idempotent.

    Raises PayloadError for a non-string or text longer than MAX_TEXT_LEN.
    """
    if not isinstance(text, str):
        raise PayloadError(f"plate text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_LEN:
        raise PayloadError(f"plate text is {len(text)} characters (limit {MAX_TEXT_LEN})")
    if text.isascii():
        return _NOT_ALNUM.sub("", text.upper())
    return _normalise_unicode(text)


@lru_cache(maxsize=4096)
def _normalise_unicode(text: str) -> str:
    """The slow path of normalise for non-ASCII text (cached: readers repeat themselves)."""
    # NFKD folds fullwidth forms, ligatures and circled digits, and splits
    # accents off their letters (Ö → O + ¨) so the loop below drops them.
    decomposed = unicodedata.normalize("NFKD", text).upper()
    out: list[str] = []
    for ch in decomposed:
        if ("A" <= ch <= "Z") or ("0" <= ch <= "9"):
            out.append(ch)
        elif ch in _HOMOGLYPHS:
            out.append(_HOMOGLYPHS[ch])
        else:
            digit = unicodedata.decimal(ch, None)  # Arabic-Indic, Devanagari … digits
            if digit is not None:
                out.append(str(digit))
    return "".join(out)


def confusion_key(normalised: str) -> str:
    """Map each OCR-confusable character of a normalised plate to its class representative."""
    return normalised.translate(CONFUSION_TABLE)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def plate_matches_format(plate: str, patterns: Sequence[str]) -> bool:
    """True when the normalised plate fully matches one of the regexes (or none are given)."""
    if not patterns:
        return True
    return any(_compiled(p).fullmatch(plate) for p in patterns)


def distance(a: str, b: str, max_distance: int) -> int | None:
    """Levenshtein distance of a and b, or None when it exceeds max_distance (exits early)."""
    if a == b:
        return 0
    if max_distance <= 0 or abs(len(a) - len(b)) > max_distance:
        return None
    # rapidfuzz's bit-parallel Levenshtein with a cutoff: about 0.1 us for a plate,
    # where a banded dynamic programme in Python took 1-10 us
    d = Levenshtein.distance(a, b, score_cutoff=max_distance)
    return d if d <= max_distance else None


def _edit_setters() -> tuple[object, ...]:
    names = ("op", "position", "read", "stored")
    if tuple(f.name for f in dataclasses.fields(Edit)) != names or Edit.__slots__ != names:
        return ()
    return tuple(getattr(Edit, n).__set__ for n in names)


_EDIT_SETTERS = _edit_setters()


def new_edit(op: str, position: int, read: str, stored: str) -> Edit:
    """Edit(op, position, read, stored), made without the frozen dataclass __init__.

    A frozen dataclass sets each field through object.__setattr__, about three
    times the cost of its slot setters; a confusion or fuzzy decision makes one
    Edit per differing character. Same type, same fields: indistinguishable.
    """
    if not _EDIT_SETTERS:
        return Edit(op, position, read, stored)
    e = object.__new__(Edit)
    s_op, s_position, s_read, s_stored = _EDIT_SETTERS
    s_op(e, op)  # type: ignore[operator]
    s_position(e, position)  # type: ignore[operator]
    s_read(e, read)  # type: ignore[operator]
    s_stored(e, stored)  # type: ignore[operator]
    return e


def edits(read: str, stored: str) -> tuple[Edit, ...]:
    """The character edits turning `read` into `stored` along one minimal Levenshtein alignment.

    Positions index `read`; "ins" means the read has an extra character, "del"
    that it lacks one (position = where it would go). Ties prefer substitutions,
    so the answer is deterministic.
    """
    if read == stored:
        return ()
    if len(read) > MAX_TEXT_LEN or len(stored) > MAX_TEXT_LEN:
        raise ValueError("edits() is for plate-sized strings")
    # A common prefix and suffix never need an edit (some optimal alignment
    # matches them), so the table only spans the differing middle.
    start = 0
    limit = min(len(read), len(stored))
    while start < limit and read[start] == stored[start]:
        start += 1
    end = 0
    while end < limit - start and read[-1 - end] == stored[-1 - end]:
        end += 1
    a = read[start : len(read) - end]
    b = stored[start : len(stored) - end]
    la, lb = len(a), len(b)
    # Shortcuts for the usual fuzzy reads; each gives what the table below would:
    if not lb:  # only extra characters in the read
        return tuple(new_edit("ins", start + i, c, "") for i, c in enumerate(a))
    if not la:  # only missing characters
        return tuple(new_edit("del", start, "", c) for c in b)
    if la == lb and Levenshtein.distance(a, b) == Hamming.distance(a, b):
        # Substitutions alone are optimal, and the backtrack, which tries the
        # diagonal first, then never leaves it.
        pairs = enumerate(zip(a, b, strict=True))
        return tuple(new_edit("sub", start + i, x, y) for i, (x, y) in pairs if x != y)
    table = [[0] * (lb + 1) for _ in range(la + 1)]
    for i in range(la + 1):
        table[i][0] = i
    for j in range(lb + 1):
        table[0][j] = j
    for i in range(1, la + 1):
        row, above = table[i], table[i - 1]
        ca = a[i - 1]
        for j in range(1, lb + 1):
            row[j] = min(
                above[j - 1] + (ca != b[j - 1]),
                above[j] + 1,
                row[j - 1] + 1,
            )
    out: list[Edit] = []
    i, j = la, lb
    while i > 0 or j > 0:
        here = table[i][j]
        if i > 0 and j > 0 and here == table[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            if a[i - 1] != b[j - 1]:
                out.append(new_edit("sub", start + i - 1, a[i - 1], b[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and here == table[i - 1][j] + 1:
            out.append(new_edit("ins", start + i - 1, a[i - 1], ""))
            i -= 1
        else:
            out.append(new_edit("del", start + i, "", b[j - 1]))
            j -= 1
    out.reverse()
    return tuple(out)
