"""Plate formats per region, and picking a plate out of OCR character candidates — pure.

A format is a template of character classes: L a letter, D a digit, with the
places where the plate shows a gap or a hyphen: "|" where one may be, "!"
where one must be (the German district/letters split: "GATE 2" on a sign has
no gap there). The OCR hands over, per character it read, a few (char, prob)
candidates, and an empty position where it saw a separator. A read becomes a
plate only when it fits a template of an accepted region: separators only at
the template's gaps, each position taking its best candidate of the right
class, or failing that the look-alike of the OCR's best character from
gated.plates' confusion classes (O→0, 8→B …) at a penalty. Only the region's
code on the blue band ("NL", "F") may be left out. Text that fits no template
(signs, stickers, "YOUR DEALER") is no plate.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from gated.plates import CONFUSION_CLASSES

Candidates = Sequence[Sequence[tuple[str, float]]]  # per position: (char, prob), best first

LETTERS = frozenset(string.ascii_uppercase)
DIGITS = frozenset(string.digits)
PLATE_ALPHABET = LETTERS | DIGITS
# what a plate shows between its groups: a space, a hyphen, a middle dot
SEPARATORS = frozenset("-\u2010\u2011\u2012\u2013\u2014\u00b7\u2022\u30fb")


def _de() -> tuple[str, ...]:
    # district (1-3 letters) - 1-2 letters, gap, 1-4 digits; at most 8 characters. Both
    # gaps are required: "GATE 2" or "BAY 14" on a sign has its letters unsplit ("BAY I4"
    # with 1 read as I would pass with an optional second gap), and the permissive German
    # series would otherwise take much sign text for a plate
    return tuple(
        "L" * district + "!" + "L" * letters + "!" + "D" * digits
        for district in range(1, 4)
        for letters in range(1, 3)
        for digits in range(1, 5)
        if district + letters + digits <= 8
    )


# Region → templates. Kept to current national series: every template widens what
# a sign or a sticker could be taken for, and a plate opens a gate.
# "!" where every plate of the series prints a gap or a hyphen: the OCR reads them
# (PP-OCR gives " " and "-"), and requiring them keeps sign words out: "AUTO SALES"
# is no UK plate, "MOTORS" no Dutch one. US states differ, so their gaps are optional.
FORMATS: dict[str, tuple[str, ...]] = {
    "uk": ("LLDD!LLL",),  # AB12 CDE (2001 series)
    "de": _de(),  # B-AB 1234
    "fr": ("LL!DDD!LL",),  # AB-123-CD (SIV)
    "it": ("LL!DDD!LL",),  # AB 123 CD
    "es": ("DDDD!LLL",),  # 1234 BCD
    # sidecodes 4-14 (98-LL-LL … 9-LL-999 style)
    "nl": (
        "DD!LL!LL",
        "LL!LL!DD",
        "LL!DD!LL",
        "DD!LLL!D",
        "D!LLL!DD",
        "LL!DDD!L",
        "L!DDD!LL",
        "LLL!DD!L",
        "L!DD!LLL",
        "D!LL!DDD",
        "DDD!LL!D",
    ),
    "us": ("DLLL|DDD", "LLL|DDDD", "LLL|DDD", "DDD|LLL"),  # 7ABC123, ABC-1234, ABC 123, 123 ABC
}
# Letters a region never issues: Spanish plates carry no vowels nor Q, Dutch ones no
# vowels (since 1951, so no plate spells a word), British ones (2001 series) no I
# nor Q. Each also keeps sign text and another region's plate out: "MAX 10 K" of a
# speed sign is no Dutch sidecode, "1059 YVP" no British "IO59 YVP".
EXCLUDED_LETTERS: dict[str, frozenset[str]] = {
    "es": frozenset("AEIOUQ"),
    "nl": frozenset("AEIOU"),
    "uk": frozenset("IQ"),
}
REGIONS: tuple[str, ...] = tuple(FORMATS)
# the country code on the blue band of a region's plates
BAND_CODES = {"uk": "UK", "de": "D", "fr": "F", "it": "I", "es": "E", "nl": "NL"}

# Look-alikes across the letter/digit divide, from the confusion classes: the
# first digit of a class for a letter read in a digit slot, and the first
# letter of the class for a digit read in a letter slot.
TO_DIGIT: dict[str, str] = {}
TO_LETTER: dict[str, str] = {}
for _cls in CONFUSION_CLASSES:
    _digits = [c for c in _cls if c in DIGITS]
    _letters = [c for c in _cls if c in LETTERS]
    for _c in _letters:
        if _digits:
            TO_DIGIT[_c] = _digits[0]
    for _c in _digits:
        if _letters:
            TO_LETTER[_c] = _letters[0]

# A look-alike substitution keeps this share of the OCR's probability, and the whole
# plate keeps it once more. O/0 and I/1 are near twins in plate fonts (the UK's prints
# O and 0 alike); B/8, S/5, Z/2, G/6, T/7, A/4 are mistakes a word on a sign makes.
TWIN_SHARE, LOOKALIKE_SHARE = 0.85, 0.6
TWINS = frozenset("0ODQ1IL")
# a runner-up this close to a best this weak: no plate. Below 0.7 rather than 0.6: a US
# "BTR 0722" read S 0.60 / B 0.35 was a false plate, and no right read on either
# benchmark seed was lost
AMBIGUOUS, AMBIGUOUS_BELOW = 0.3, 0.7
MAX_SWAPS = 2  # more look-alike substitutions than this: a word, not a misread plate
TRIM_PENALTY = 0.9  # a country band's code dropped before the plate
# another text fitting the line this close to the best: no plate. Only the OCR's own
# candidates come this close (a look-alike costs at least 0.85 twice); a band code
# dropped costs 0.9, so "D EYM 5" against "DEYM 5" is no rival
RIVAL_SHARE = 0.95


@dataclass(frozen=True, slots=True)
class PlateMatch:
    """A read that fits a region's format."""

    text: str  # normalised plate, A-Z0-9
    confidence: float  # 0..1
    region: str
    chars: tuple[tuple[tuple[str, float], ...], ...]  # per position, best first, fitting its slot


@dataclass(frozen=True, slots=True)
class _Template:
    slots: str  # "L"/"D" per character
    gaps: frozenset[int]  # character indices a separator may precede
    required: frozenset[int]  # character indices a separator must precede
    region: str


def _parse(template: str, region: str) -> _Template:
    slots, gaps, required = "", set(), set()
    for c in template:
        if c in "|!":
            gaps.add(len(slots))
            if c == "!":
                required.add(len(slots))
        else:
            slots += c
    return _Template(slots, frozenset(gaps), frozenset(required), region)


@lru_cache(maxsize=64)
def _templates(regions: tuple[str, ...]) -> tuple[_Template, ...]:
    """Templates of the accepted regions (all when empty), in region order."""
    chosen = [r for r in REGIONS if r in regions] if regions else list(REGIONS)
    return tuple(_parse(t, r) for r in chosen for t in FORMATS[r])


def _slot(
    candidates: Sequence[tuple[str, float]], kind: str, excluded: frozenset[str]
) -> list[tuple[str, float, float]]:
    """(char, prob, share) fitting a slot (L or D), best first.

    share < 1: the character is the look-alike of the OCR's best one, kept at that
    share of its probability, not a candidate the OCR offered with a better one.
    """
    wanted = LETTERS if kind == "L" else DIGITS
    out: dict[str, tuple[float, float]] = {}
    for ch, p in candidates:
        if ch in wanted and ch not in excluded and p > out.get(ch, (-1.0, 1.0))[0]:
            out[ch] = (p, 1.0)
    top, p = candidates[0]
    swap = (TO_LETTER if kind == "L" else TO_DIGIT).get(top)
    if swap is not None and swap not in excluded:
        share = TWIN_SHARE if top in TWINS else LOOKALIKE_SHARE
        if p * share > out.get(swap, (-1.0, 1.0))[0]:
            out[swap] = (p * share, share)
    return sorted(((c, p, k) for c, (p, k) in out.items()), key=lambda x: (-x[1], x[0]))


def _groups(read: Candidates) -> list[tuple[list[list[tuple[str, float]]], bool]]:
    """The read cut into groups at separators: (characters, whether a break precedes it).

    A position without plate-alphabet candidates separates groups: when empty or
    holding a plate's separator (a gap, "-") the groups may belong to one plate;
    when holding another mark ("/", ":") that is a break no plate spans.
    """
    groups: list[tuple[list[list[tuple[str, float]]], bool]] = [([], False)]
    for position in read:
        kept = []
        marks = False
        for item in position:
            if not isinstance(item, tuple) or len(item) != 2:
                continue
            ch, p = item
            if not isinstance(ch, str) or not isinstance(p, int | float) or p != p:  # NaN
                continue
            ch = ch.upper()
            if ch in PLATE_ALPHABET:
                kept.append((ch, min(1.0, max(0.0, float(p)))))
            elif ch.strip() and ch not in SEPARATORS:
                marks = True
        if kept:
            groups[-1][0].append(kept)
        elif groups[-1][0]:
            groups.append(([], marks))
        elif marks:
            groups[-1] = (groups[-1][0], True)
    return [g for g in groups if g[0]]


def _fit(
    chars: list[list[tuple[str, float]]], starts: frozenset[int], template: _Template
) -> tuple[str, float, tuple[tuple[tuple[str, float], ...], ...]] | None:
    """(text, confidence, per-slot candidates) when the characters fit the template."""
    if len(chars) != len(template.slots):
        return None
    if not starts <= template.gaps or not template.required <= starts:
        return None
    excluded = EXCLUDED_LETTERS.get(template.region, frozenset())
    picked = []
    swaps, kept = 0, 1.0
    for kind, position in zip(template.slots, chars, strict=True):
        fits = _slot(position, kind, excluded)
        if not fits:
            return None
        if (
            len(fits) > 1
            and fits[0][1] < AMBIGUOUS_BELOW
            and fits[1][2] == 1.0  # a runner-up the OCR offered, not a look-alike
            and fits[1][1] >= AMBIGUOUS * fits[0][1]
        ):
            return None  # the OCR cannot tell two fitting characters apart (N or W?)
        swaps += fits[0][2] < 1.0
        kept *= fits[0][2]
        picked.append(tuple((c, p) for c, p, _ in fits[:3]))
    if swaps > MAX_SWAPS:
        return None
    # geometric mean: one doubtful character pulls the whole plate down; each look-alike
    # the OCR did not offer itself costs the whole plate (a word on a sign becomes a
    # plate by such swaps: MOTORS → MO70RS)
    conf = math.exp(sum(math.log(max(p[0][1], 1e-9)) for p in picked) / len(picked))
    conf *= kept
    return "".join(p[0][0] for p in picked), conf, tuple(picked)


def match_plate(read: Candidates, regions: Iterable[str] = ()) -> PlateMatch | None:
    """The best plate that the per-character candidates spell in an accepted region, or None.

    A plate is all the text between breaks ("/", ":", the line's ends), less only
    its region's code on the blue band: a part of a line is never taken for a
    plate ("MAX 10 K" of a speed sign, "894 NZ" of a plate whose start was missed).
    """
    best: PlateMatch | None = None
    rival = 0.0  # the best confidence of another text the line also spells
    for chars, starts in _segments(_groups(read)):
        for template in _templates(tuple(regions)):
            code = BAND_CODES.get(template.region, "")
            for skip in (0, len(code)) if code else (0,):
                # the band's code, read hard against the plate ("FQQ-535-VN") or apart
                if skip and not _starts_with(chars, code):
                    continue
                gaps = frozenset(k - skip for k in starts if k > skip)
                fit = _fit(chars[skip:], gaps, template)
                if fit is None:
                    continue
                text, conf, picked = fit
                conf *= TRIM_PENALTY if skip else 1.0
                if best is None or conf > best.confidence:
                    if best is not None and best.text != text:
                        rival = max(rival, best.confidence)
                    best = PlateMatch(text, conf, template.region, picked)
                elif text != best.text:
                    rival = max(rival, conf)
    if best is not None and rival >= RIVAL_SHARE * best.confidence:
        # two plates fit the line nearly as well (a "J" or a "3" read almost evenly: the
        # British "JO59 YVP" or the Spanish "3059 YVP"): which one is there cannot be told
        return None
    return best


def _segments(
    groups: list[tuple[list[list[tuple[str, float]]], bool]],
) -> list[tuple[list[list[tuple[str, float]]], frozenset[int]]]:
    """The runs of groups between breaks: (characters, indices where a group starts)."""
    out: list[tuple[list[list[tuple[str, float]]], set[int]]] = []
    for chars, after_break in groups:
        if not out or after_break:
            out.append(([], set()))
        run, starts = out[-1]
        if run:
            starts.add(len(run))
        run.extend(chars)
    return [(run, frozenset(starts)) for run, starts in out]


def _starts_with(chars: list[list[tuple[str, float]]], code: str) -> bool:
    """True when the OCR's best reading of the first characters is the code."""
    return len(chars) > len(code) and all(chars[i][0][0] == c for i, c in enumerate(code))


def fits_format(text: str, regions: Iterable[str] = ()) -> str | None:
    """The first accepted region whose format the normalised text fits (gaps ignored), or None."""
    for template in _templates(tuple(regions)):
        if len(template.slots) != len(text):
            continue
        excluded = EXCLUDED_LETTERS.get(template.region, frozenset())
        if all(
            (c in LETTERS and c not in excluded) if k == "L" else c in DIGITS
            for k, c in zip(template.slots, text, strict=True)
        ):
            return template.region
    return None
