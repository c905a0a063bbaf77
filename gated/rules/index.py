"""The in-memory plate/tag index the decision uses (`RuleIndex`), built once per rule-set
version over a RuleSource.

Compact tables over every plate (deny list, residents' vehicles, visitor passes) answer
exact, OCR-confusion and fuzzy (symmetric-deletion) lookups in microseconds for a million
vehicles on a Raspberry Pi, plus the residents' facts the policy needs without reading
entities. The tables are plain buffers (`array`, `str`, `bytes`); numpy is imported only
to build a large table (vectorised), so a daemon with a small or medium rule set never
loads it. Immutable once built: the daemon builds a new index in a worker thread and
swaps the reference. The design (hashing, levels, memory figures and the benchmark
that measures them): docs/rule-index.md.
"""

from __future__ import annotations

import dataclasses
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import accumulate, chain, combinations, compress, count, islice, repeat
from operator import itemgetter, lshift, or_
from typing import TYPE_CHECKING, Any

from rapidfuzz.distance import Levenshtein

from gated.errors import RulesError
from gated.model import Edit, Match, MatchKind
from gated.plates import (
    CONFUSION_TABLE,
    MAX_PLATE_LEN,
    MAX_TAG_LEN,
    confusion_key,
    edits,
    new_edit,
    normalise,
)
from gated.rules.entities import (
    DenyEntry,
    Grant,
    Group,
    Resident,
    RuleSource,
    Schedule,
    Tag,
    Vehicle,
    VehicleFactsRow,
    VisitorPass,
)

if TYPE_CHECKING:  # imported at run time only by the vectorised build of a large table
    import numpy as np

LISTS: tuple[str, ...] = ("deny", "resident", "visitor_pass")  # Match.list names, in row order
TAG_LIST = "tag"
_LIST_INDEX = {name: i for i, name in enumerate(LISTS)}

# A key hashes to (its ASCII bytes read as one big-endian number) times a
# mixing constant, modulo a prime just under 2**28. Modulo a prime, keys
# differing in one character never collide (the difference c * 256**i * mix is
# never a multiple of it); the mixing constant (about 0.618 of the prime, as
# in Fibonacci hashing) makes the last characters move the top bits too, which
# pick the bucket. The query side is a few C-level integer operations instead
# of a Python loop per character.
_PRIME = 268_435_399  # largest prime below 2**28
_MIX = 165_902_377  # about 0.618 * _PRIME
_ROW_BITS = 30
_ROW_MASK = (1 << _ROW_BITS) - 1
_LEVEL_MASK = 3
_POS_SHIFT = 32  # 4 bits: MAX_PLATE_LEN is 16
_HASH_SHIFT = 36  # 28 hash bits: about 0.03 false entries per probe of 8 M entries
_MAX_ROWS = 1 << _ROW_BITS
_CHUNK = 1 << 16  # rows per build step: bounds the temporary arrays and lists
_CACHE = 4096  # entities kept per kind (a few MB at most)
_NORMALISED = re.compile(r"[A-Z0-9]+")
_NORMALISED_OR_EMPTY = re.compile(r"[A-Z0-9]*")
# A table expected to hold more entries than this is built with numpy (vectorised):
# about 110,000 plates at depth 1. Below it the build runs in Python: no numpy import
# (about 13 MB of the daemon's memory), the same entries in the same order.
_VECTORISE_FROM = 1 << 20

_SCREEN_MAX = 1 << 17  # deny-screen strings kept as a set (about 10 MB at most)
# strings in the deletion neighbourhood of an n-character key, by depth 0-2
_NEIGHBOURHOOD = [(1, 1 + n, 1 + n + n * (n - 1) // 2) for n in range(MAX_PLATE_LEN + 1)]
# index pairs (i, j), i < j, whose deletion from an n-character key gives its level-2 keys
_PAIRS = [[(i, j) for i in range(n) for j in range(i + 1, n)] for n in range(MAX_PLATE_LEN + 1)]
_KIND_RANK = {MatchKind.EXACT: 0, MatchKind.CONFUSION: 1, MatchKind.FUZZY: 2}


def _byte_table(text_map: dict[str, str]) -> list[int]:
    """byte -> byte of A-Z0-9 after `text_map`, 0 for padding, 255 for anything else."""
    table = [255] * 256
    table[0] = 0
    for ch in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[ord(ch)] = ord(text_map.get(ch, ch))
    return table


@cache
def _np_tables() -> tuple[np.ndarray, np.ndarray]:
    """The vectorised build's lookup tables: powers of 256 modulo the prime, confusion LUT."""
    import numpy as np

    powers = np.array([pow(256, e, _PRIME) for e in range(MAX_TAG_LEN + 2)], dtype=np.uint64)
    conf = _byte_table({c: confusion_key(c) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"})
    return powers, np.array(conf, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A rule-set entry a read matched: the store's row key, how it matched, its index row."""

    key: int
    match: Match
    row: int = -1  # the index's own row number (for its compact facts); -1: unknown


@dataclass(frozen=True, slots=True)
class PlateCandidates:
    """Everything a plate matched, per list, best first (exact, confusion, then by distance)."""

    deny: tuple[Candidate, ...] = ()
    resident: tuple[Candidate, ...] = ()
    visitor_pass: tuple[Candidate, ...] = ()


# --- hashing (scalar: the query side) -----------------------------------------------


def _hash(key: bytes) -> int:
    """The 28-bit hash of an ASCII key."""
    return int.from_bytes(key, "big") * _MIX % _PRIME


# Per key length n and deleted position i: (shift dropping the tail from i on,
# shift putting that head back one byte lower, mask of the tail after i). The
# key read as one big-endian number v less its byte i is then
# (v >> a) << b | v & m: three integer operations instead of two slices and a
# conversion per deletion.
_DEL_SPLITS = [
    [(8 * (n - i), 8 * (n - 1 - i), (1 << 8 * (n - 1 - i)) - 1) for i in range(n)]
    for n in range(MAX_TAG_LEN + 1)
]


def _del_hashes(key: bytes) -> list[int]:
    """Hashes of each one-character deletion of key, by deleted position."""
    p, mix = _PRIME, _MIX
    v = int.from_bytes(key, "big")
    return [((v >> a) << b | v & m) * mix % p for a, b, m in _DEL_SPLITS[len(key)]]


def _del2_hashes(key: bytes) -> list[int]:
    """Distinct hashes of the key with two characters deleted."""
    p, mix = _PRIME, _MIX
    frombytes = int.from_bytes
    pairs = _PAIRS[len(key)]
    return list(
        {frombytes(key[:i] + key[i + 1 : j] + key[j + 1 :], "big") * mix % p for i, j in pairs}
    )


def _key_entries(keys: Iterable[bytes], first_row: int, depth: int, out: list[int]) -> None:
    """Append the table entries of consecutive rows' confusion keys (the Python build).

    The scalar twin of `_chunk_entries`: level 0 is the key's hash, level 1 each
    one-character deletion with its position, level 2 the distinct two-character
    deletions (position 0), each `hash << 36 | position << 32 | level << 30 | row`.
    """
    p, mix = _PRIME, _MIX
    frombytes = int.from_bytes
    append, extend = out.append, out.extend
    splits = _DEL_SPLITS_AT
    for row, key in zip(count(first_row), keys):
        v = frombytes(key, "big")
        append((v * mix % p) << _HASH_SHIFT | row)
        if depth >= 1:
            tag = 1 << _ROW_BITS | row
            extend([(((v >> a) << b | v & m) * mix % p) << _HASH_SHIFT | at | tag
                    for a, b, m, at in splits[len(key)]])
        if depth >= 2:
            tag = 2 << _ROW_BITS | row
            extend([h << _HASH_SHIFT | tag for h in _del2_hashes(key)])


# _DEL_SPLITS with each deleted position already shifted into its entry bits
_DEL_SPLITS_AT = [
    [(a, b, m, i << _POS_SHIFT) for i, (a, b, m) in enumerate(splits)] for splits in _DEL_SPLITS
]


# --- packing (vectorised: the build side of a large table) -----------------------------


def _pack_matrix(sym: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of the rows of a 0-padded byte matrix: (key hashes, deletion hashes, valid).

    The vectorised twin of `_hash`/`_del_hashes`: every product stays below
    2**56 because both factors are reduced modulo the 28-bit prime first.
    """
    import numpy as np

    powers, _ = _np_tables()
    n, width = sym.shape
    s = sym.astype(np.uint64)
    p = np.uint64(_PRIME)
    prefix = np.zeros((n, width + 1), dtype=np.uint64)
    for i in range(width):
        prefix[:, i + 1] = (prefix[:, i] * np.uint64(256) + s[:, i]) % p
    cols = np.arange(width)
    exps = np.clip(lens[:, None] - 1 - cols[None, :], 0, None)
    weights = powers[exps]
    terms = s * weights % p  # padding bytes are 0, so their terms vanish
    suffix = np.zeros((n, width + 1), dtype=np.uint64)
    # at most 16 terms below 2**28 each: the sum cannot overflow before the modulo
    suffix[:, :width] = np.cumsum(terms[:, ::-1], axis=1, dtype=np.uint64)[:, ::-1] % p
    dels = (prefix[:, :width] * weights + suffix[:, 1:]) % p
    valid = cols[None, :] < lens[:, None]
    mix = np.uint64(_MIX)
    return suffix[:, 0] * mix % p, dels * mix % p, valid


def _entries(
    hashes: np.ndarray, level: int, rows: np.ndarray, positions: np.ndarray | None = None
) -> np.ndarray:
    """Table entries hash << 36 | position << 32 | level << 30 | row."""
    import numpy as np

    out = (hashes << np.uint64(_HASH_SHIFT)) | np.uint64(level << _ROW_BITS)
    out |= rows.astype(np.uint64)
    if positions is not None:
        out |= positions.astype(np.uint64) << np.uint64(_POS_SHIFT)
    return out


def _sorted_unique(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate, sort and de-duplicate table entries."""
    import numpy as np

    if not parts:
        return np.zeros(0, dtype=np.uint64)
    table = np.concatenate(parts)
    parts.clear()
    table.sort()
    if len(table) < 2:
        return table
    keep = np.empty(len(table), dtype=bool)
    keep[0] = True
    np.not_equal(table[1:], table[:-1], out=keep[1:])
    return table[keep]


def _chunk_entries(chunk: np.ndarray, first_row: int, depth: int) -> list[np.ndarray]:
    """The entries of a chunk of fixed-width confusion keys (the vectorised build)."""
    import numpy as np

    width = chunk.dtype.itemsize
    sym = _np_tables()[1][chunk.view(np.uint8).reshape(len(chunk), width)]
    lens = (sym != 0).sum(axis=1)
    rows = np.arange(first_row, first_row + len(chunk), dtype=np.uint64)
    codes, dels, valid = _pack_matrix(sym, lens)
    out = [_entries(codes, 0, rows)]
    if depth >= 1:
        row_grid = np.broadcast_to(rows[:, None], dels.shape)
        pos_grid = np.broadcast_to(np.arange(width)[None, :], dels.shape)
        out.append(_entries(dels[valid], 1, row_grid[valid], pos_grid[valid]))
    if depth >= 2:
        for i in range(width):
            has = lens > i
            if not has.any():
                continue
            sub = np.delete(sym[has], i, axis=1)
            _, dels2, valid2 = _pack_matrix(sub, lens[has] - 1)
            grid2 = np.broadcast_to(rows[has][:, None], dels2.shape)
            out.append(_entries(dels2[valid2], 2, grid2[valid2]))
    return out


# --- texts ----------------------------------------------------------------------------


def _clean_texts(texts: list[Any], max_len: int) -> tuple[list[str], list[bool] | None]:
    """The usable rows' normalised texts and which rows were usable (None: every row).

    The store promises normalised text; a row that is not is repaired here
    (`normalise`; trailing NULs are dropped first), and a row that is empty,
    longer than `max_len` or cannot be repaired (hostile text in a store row) is
    skipped: never a failed build. One C-level check covers the common case.
    """
    try:
        joined: str | None = "".join(texts)
    except TypeError:
        joined = None
    if (
        joined is not None
        and joined.isascii()
        and _NORMALISED_OR_EMPTY.fullmatch(joined)
        and (not texts or (min(map(len, texts)) > 0 and max(map(len, texts)) <= max_len))
    ):
        return texts, None
    clean: list[str] = []
    usable: list[bool] = []
    for text in texts:
        ok = False
        if type(text) is str:
            text = text.rstrip("\0")
            ok = text.isascii() and _NORMALISED_OR_EMPTY.fullmatch(text) is not None
        if not ok:
            try:
                text = normalise(text)
            except Exception:  # hostile text in a store row: skip the row, never fail the build
                text = ""
        keep = 0 < len(text) <= max_len
        usable.append(keep)
        if keep:
            clean.append(text)
    return clean, usable


class _Texts:
    """Short ASCII texts (normalised plates, tags) NUL-padded to one width in one str.

    No object per text: a million 7-character plates take 7 MB. Reading one
    slices the str (a new str, no decoding).
    """

    __slots__ = ("_blob", "_width", "width")

    def __init__(self, texts: Sequence[str]) -> None:
        self.width = width = max(1, max(map(len, texts), default=1))
        self._width = width
        self._blob = "".join(map(str.ljust, texts, repeat(width), repeat("\0")))

    def __len__(self) -> int:
        return len(self._blob) // self._width

    def __getitem__(self, row: int) -> str:
        """The text at a row."""
        w = self._width
        start = row * w
        return self._blob[start : start + w].rstrip("\0")

    def slice(self, start: int, stop: int) -> list[str]:
        """The texts of rows start..stop - 1."""
        return [self[row] for row in range(start, stop)]

    def fixed_width(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop - 1 as a numpy fixed-width bytes array (the vectorised build)."""
        import numpy as np

        w = self._width
        raw = self._blob[start * w : stop * w].encode("ascii")
        return np.frombuffer(raw, dtype=f"S{w}")

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return len(self._blob)


def _key_array(keys: list[int], usable: list[bool] | None) -> memoryview:
    """Store row keys of the usable rows, as 32-bit ints when they fit (they usually do)."""
    kept = keys if usable is None else list(compress(keys, usable))
    if not kept or (min(kept) >= -(2**31) and max(kept) < 2**31):
        return memoryview(array("i", kept))
    return memoryview(array("q", kept))


# --- tables ---------------------------------------------------------------------------


def _bucket_bits(n: int) -> int:
    """Bits of the bucket number for n entries: about two entries per bucket."""
    return min(max((n - 1).bit_length() - 1, 4), 64 - _HASH_SHIFT)  # ceil(log2(n / 2))


class _HashTable:
    """Sorted uint64 entries (hash28 in the top bits), probed by hash in O(1).

    A large table keeps a bucket-start array over the top bits of the hash
    (about two entries per bucket): a probe reads two starts and scans a few
    entries, instead of a 24-step binary search through a table far larger
    than the CPU cache, and without numpy call overhead. A small table (the
    deny list, tags of a small site) is a plain dict, which is faster still.
    Entries may come as a sorted list, an `array("Q")` or a numpy uint64 array
    (a vectorised build); the table holds them as a buffer either way.
    """

    __slots__ = ("_dict", "_entries", "_shift", "_starts", "entries")

    SMALL = 1 << 16  # entries up to which a dict is used (about 100 bytes each)

    def __init__(self, entries: Any) -> None:
        vectorised = hasattr(entries, "dtype")  # a numpy array
        if not vectorised and not isinstance(entries, array):
            entries = array("Q", entries)
        self.entries = memoryview(entries)
        self._dict: dict[int, list[int]] | None = None
        n = len(entries)
        if n <= self.SMALL:
            self._dict = {}
            for e in self.entries.tolist():
                self._dict.setdefault(e >> _HASH_SHIFT, []).append(e)
            self._shift = 0
            self._starts = self._entries = memoryview(b"")
            return
        bits = _bucket_bits(n)
        self._shift = 64 - _HASH_SHIFT - bits
        if vectorised:
            import numpy as np

            bucket = (entries >> np.uint64(64 - bits)).astype(np.intp)
            starts = np.zeros((1 << bits) + 1, dtype=np.uint32 if n < 2**32 else np.int64)
            np.cumsum(np.bincount(bucket, minlength=1 << bits), out=starts[1:])
            del bucket
            self._starts = starts.data
        else:
            # sorted entries: a bucket's count, then the running sum (C-level loops)
            per_bucket = Counter(map((64 - bits).__rrshift__, entries))
            self._starts = memoryview(array(
                "I" if n < 2**32 else "q",
                accumulate(map(per_bucket.__getitem__, range(1 << bits)), initial=0)))
        # memoryviews: indexing them yields Python ints at C speed
        self._entries = self.entries

    @property
    def nbytes(self) -> int:
        """Bytes held (a dict table is counted at about 100 bytes per entry)."""
        if self._dict is not None:
            return self.entries.nbytes + 100 * len(self.entries)
        return self.entries.nbytes + self._starts.nbytes

    def probe(self, h: int) -> list[int]:
        """The entries whose hash is h."""
        if self._dict is not None:
            return self._dict.get(h, _NONE)
        b = h >> self._shift
        lo = self._starts[b]
        hi = self._starts[b + 1]
        if lo == hi:
            return _NONE
        return [e for e in self._entries[lo:hi].tolist() if e >> _HASH_SHIFT == h]


_NONE: list[int] = []


def _none(_: object) -> None:
    return None
_EMPTY = _HashTable([])


class _Strings:
    """Many short strings in one bytes blob with an offsets array (no object per string).

    A million ids as Python strings take about 60 MB; here they take their
    UTF-8 length plus four bytes each. Reading one decodes a short slice.
    """

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: bytes, offsets: array[int]) -> None:
        self.blob = blob  # UTF-8 (surrogates passed through)
        self.offsets = memoryview(offsets)  # string i is blob[offsets[i]:offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        """The i-th string."""
        off = self.offsets
        return self.blob[off[i] : off[i + 1]].decode("utf-8", "surrogatepass")

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return len(self.blob) + self.offsets.nbytes


class _StringsBuilder:
    """Collects strings chunk by chunk into a `_Strings`."""

    __slots__ = ("_lens", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._lens: array[int] = array("q")

    def extend(self, texts: list[object]) -> None:
        """Append a chunk of strings (anything else is stored as its str())."""
        try:
            joined: str | None = "".join(texts)  # type: ignore[arg-type]
        except TypeError:
            joined = None
        if joined is not None and joined.isascii():  # ids usually are: C-level passes only
            self._parts.append(joined.encode("ascii"))
            self._lens.extend(map(len, texts))  # type: ignore[arg-type]
            return
        enc = [
            (t if type(t) is str else str(t)).encode("utf-8", "surrogatepass") for t in texts
        ]
        self._parts.append(b"".join(enc))
        self._lens.extend(map(len, enc))

    def finish(self, keep: Iterable[bool] | None) -> _Strings:
        """The strings collected, only those where `keep` is true (all when None)."""
        blob = b"".join(self._parts)
        lens = self._lens
        self._parts, self._lens = [], array("q")
        if keep is not None:
            ends = list(accumulate(lens))
            raw = memoryview(blob)
            pieces = [raw[end - size : end] for end, size, k in zip(ends, lens, keep, strict=True)
                      if k]
            blob = b"".join(pieces)
            del pieces, raw
            lens = array("q", compress(lens, keep))
        offsets = array("I" if len(blob) < 2**32 else "Q", accumulate(lens, initial=0))
        return _Strings(blob, offsets)


# bits of a VehicleFacts.info word, below its grant number
VEHICLE_ACTIVE = 1
RESIDENT_KNOWN = 2  # the vehicle's resident exists
RESIDENT_ACTIVE = 4
GRANT_SHIFT = 3
_COLUMNS = tuple(itemgetter(i) for i in range(7))  # of a VehicleFactsRow
# a row's "resident active" (None: no such resident) -> its flag bits
_RESIDENT_BITS = {None: 0, False: RESIDENT_KNOWN, True: RESIDENT_KNOWN | RESIDENT_ACTIVE}


class VehicleFacts:
    """What a decision needs of each indexed vehicle, loaded with the index: no entity reads.

    Per vehicle row (in index order) one ``info`` word, its flag bits
    (`VEHICLE_ACTIVE`, `RESIDENT_KNOWN`, `RESIDENT_ACTIVE`) plus the number of
    its resident's grant in `grants` shifted by `GRANT_SHIFT`, and two strings,
    the vehicle's id then its resident's, side by side in one blob. Residents
    share few distinct grants (own access points, own schedule, groups), so
    each is stored once. A decision touches three places (the word, two
    offsets, the id bytes), which matters when a million cars do not fit in
    the CPU cache. About 22 bytes per vehicle with short ids. Read at the same
    rule-set version as the plates, so an index row and its facts always agree.
    """

    __slots__ = ("base", "grants", "ids", "info")

    def __init__(
        self, base: int, info: array[int], grants: tuple[Grant, ...], ids: _Strings
    ) -> None:
        self.base = base  # index row of the first vehicle
        self.info = memoryview(info)  # indexing a memoryview yields Python ints
        self.grants = grants
        self.ids = ids  # vehicle id of row i at 2 i, its resident's id at 2 i + 1

    def __len__(self) -> int:
        return len(self.info)

    @property
    def nbytes(self) -> int:
        """Bytes held (the grants themselves are few and not counted)."""
        return self.info.nbytes + self.ids.nbytes

    def vehicle_id(self, row: int) -> str:
        """The vehicle id at an index row."""
        return self.ids[2 * (row - self.base)]

    def resident_id(self, row: int) -> str:
        """The resident id of the vehicle at an index row."""
        return self.ids[2 * (row - self.base) + 1]


class _VehicleFactsBuilder:
    """Reads `iter_vehicle_facts` chunk-wise: plates and keys for the index, facts aside."""

    def __init__(self) -> None:
        self._info: array[int] = array("I")
        # grant -> its number; None (no resident: flags say so, the number is unused) -> 0
        self._grants: dict[Grant | None, int] = {None: 0}
        self._count = 0  # real grants numbered so far
        self._ids = _StringsBuilder()

    def read(self, rows: Iterator[VehicleFactsRow], keys: list[int], texts: list[str]) -> None:
        """Append every row's key and plate to keys/texts and keep its facts."""
        numbers = self._grants
        while True:
            # a chunk at a time, column by column with C-level map(): bounded temporaries.
            # (zip(*chunk) would make 65536-tuples, which sets off the cyclic GC over
            # and over: three times slower.)
            chunk = list(islice(rows, _CHUNK))
            if not chunk:
                return
            if set(map(len, chunk)) != {7}:
                raise ValueError("a vehicle facts row has not 7 fields")
            ks, plates, vids, vactive, rids, ractive, grant = (
                list(map(column, chunk)) for column in _COLUMNS
            )
            del chunk
            keys.extend(ks)
            texts.extend(plates)
            n = len(ks)
            ids: list[object] = [None] * (2 * n)
            ids[0::2] = vids
            ids[1::2] = rids
            self._ids.extend(ids)
            for g in set(grant).difference(numbers):  # the few grants not seen before
                numbers[g] = self._count
                self._count += 1
            if self._count >= 1 << (32 - GRANT_SHIFT):
                raise ValueError("too many distinct grants")
            # grant number << GRANT_SHIFT | resident bits | vehicle active, at C level
            words = map(lshift, map(numbers.__getitem__, grant), repeat(GRANT_SHIFT))
            words = map(or_, words, map(_RESIDENT_BITS.__getitem__, ractive))
            self._info.extend(map(or_, words, map(bool, vactive)))

    def finish(self, base: int, keep: list[bool] | None) -> VehicleFacts:
        """The facts of the rows the index kept (`keep`: one flag per row read; None: all)."""
        info = self._info
        self._info = array("I")
        if keep is not None:
            info = array("I", compress(info, keep))
        grants = tuple(g for g in self._grants if g is not None)  # in numbering order
        both = None if keep is None else [k for k in keep for _ in (0, 1)]
        return VehicleFacts(base, info, grants, self._ids.finish(both))


class RuleIndex:
    """A RuleSource plus its compact plate/tag index; immutable once built."""

    __slots__ = (
        "_bounds",
        "_deny_halves",
        "_deny_screen",
        "_deny_table",
        "_grant_schedules",
        "_keys",
        "_plates",
        "_source",
        "_table",
        "_tag_keys",
        "_tag_table",
        "_tags",
        "deny_entry",
        "depths",
        "group",
        "resident",
        "schedule",
        "schedule_answers",
        "skipped",
        "tag",
        "vehicle",
        "vehicle_facts",
        "version",
        "visitor_pass",
    )

    def __init__(self) -> None:
        """Use RuleIndex.build; the constructor makes an empty index."""
        self._source: RuleSource | None = None
        self.version = 0
        self.depths: dict[str, int] = dict.fromkeys(LISTS, 0)
        self.skipped = 0  # store rows that were empty or too long to index
        self._bounds = (0, 0, 0, 0)
        self._plates = _Texts(())
        self._keys = memoryview(array("i"))  # indexing gives Python ints
        self._deny_table = _EMPTY
        self._deny_screen: frozenset[str] | None = frozenset()
        self._deny_halves: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
        self._table = _EMPTY
        self._tags = _Texts(())
        self._tag_keys = memoryview(array("i"))
        self._tag_table = _EMPTY
        self.vehicle_facts: VehicleFacts | None = None  # when the source lists them in bulk
        self._cache_reads(None)

    @property
    def source(self) -> RuleSource | None:
        """The store decisions read entities from."""
        return self._source

    @source.setter
    def source(self, source: RuleSource | None) -> None:
        """Read entities from another store from now on (e.g. the event loop's own
        connection after a build in a worker thread); the entity caches start empty."""
        self._source = source
        self._cache_reads(source)

    def _cache_reads(self, source: RuleSource | None) -> None:
        """Entity getters of the source behind small LRU caches, one set per rule-set version.

        A decision reads three to six entities; from SQLite each costs a query
        (about 10 µs here), so the residents, groups and schedules that come to
        the gate every day are kept. lru_cache is thread-safe; the caches go
        away with the RuleIndex when a new version replaces it. Answers derived
        from the source's groups and schedules (compiled grants, schedule
        answers per minute) start afresh with it too.
        """
        self._grant_schedules: dict[tuple[int, str], tuple[str | None, ...]] = {}
        self.schedule_answers: dict[tuple[str, Any, float], bool] = {}
        self.vehicle: Callable[[int], Vehicle | None]
        self.visitor_pass: Callable[[int], VisitorPass | None]
        if source is None:
            for name in ("deny_entry", "group", "resident", "schedule", "tag", "vehicle"):
                setattr(self, name, _none)
            self.visitor_pass = _none
            return
        self.vehicle = lru_cache(_CACHE)(source.vehicle)
        self.visitor_pass = lru_cache(_CACHE)(source.visitor_pass)
        self.deny_entry: Callable[[int], DenyEntry | None] = lru_cache(_CACHE)(source.deny_entry)
        self.tag: Callable[[int], Tag | None] = lru_cache(_CACHE)(source.tag)
        self.resident: Callable[[str], Resident | None] = lru_cache(_CACHE)(source.resident)
        self.group: Callable[[str], Group | None] = lru_cache(_CACHE)(source.group)
        self.schedule: Callable[[str], Schedule | None] = lru_cache(_CACHE)(source.schedule)

    # --- building ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        source: RuleSource,
        *,
        deny_depth: int = 2,
        resident_depth: int = 1,
        pass_depth: int = 1,
        vehicle_facts: bool = True,
    ) -> RuleIndex:
        """Index every plate and tag of `source`; raises RulesError if it changes meanwhile.

        Depths are the largest fuzzy distance each list can answer (0-2); the
        defaults cover every PolicyConfig except resident_fuzzy_distance = 2,
        which needs resident_depth=2 and about length² more entries per car.

        When the source is a `VehicleFactsSource` (and `vehicle_facts` is left
        on) the vehicles' ids, active flags and grants are loaded too, about 25
        bytes per vehicle, and the policy decides a resident's car from them
        without reading entities; `vehicle_facts=False` keeps the entity path.
        """
        depths = (deny_depth, resident_depth, pass_depth)
        if any(d not in (0, 1, 2) for d in depths):
            raise ValueError("fuzzy depths must be 0, 1 or 2")
        pin_mmap_threshold()
        self = cls()
        self.source = source
        self.version = source.version
        self.depths = dict(zip(LISTS, depths, strict=True))
        iters: list[Callable[[], Iterator[tuple[int, str]]]] = [
            source.iter_deny_plates,
            source.iter_vehicle_plates,
            source.iter_pass_plates,
        ]
        texts: list[str] = []
        keys: list[int] = []
        counts: list[int] = []
        bulk = getattr(source, "iter_vehicle_facts", None) if vehicle_facts else None
        facts = _VehicleFactsBuilder() if bulk is not None else None
        for lst, rows in enumerate(iters):
            before = len(texts)
            if lst == 1 and facts is not None and bulk is not None:
                try:
                    facts.read(bulk(), keys, texts)
                except (TypeError, ValueError, KeyError) as err:
                    raise RulesError(f"malformed vehicle facts in the rule source: {err}") from err
            else:
                for key, text in rows():
                    keys.append(key)
                    texts.append(text)
            counts.append(len(texts) - before)
        plates, usable = _clean_texts(texts, MAX_PLATE_LEN)
        del texts
        self._keys = _key_array(keys, usable)
        del keys
        # list boundaries after dropping unusable rows
        edges = list(accumulate(counts, initial=0))
        kept = counts if usable is None else [
            sum(usable[edges[i] : edges[i + 1]]) for i in range(3)]
        self.skipped = edges[3] - sum(kept)
        if sum(kept) >= _MAX_ROWS:
            raise RulesError(f"rule set too large to index ({sum(kept)} plates)")
        self._bounds = (0, kept[0], kept[0] + kept[1], sum(kept))
        if facts is not None:
            self.vehicle_facts = facts.finish(
                kept[0], None if usable is None else usable[edges[1] : edges[2]])
        del usable
        self._plates = _Texts(plates)
        deny = plates[: kept[0]]
        del plates
        self._deny_table = self._build_table((0,), depths)
        self._deny_screen = _deletion_strings(deny, deny_depth)
        self._deny_halves = _halves(deny)
        self._table = self._build_table((1, 2), depths)
        self._build_tags(source)
        if source.version != self.version:
            raise RulesError("rule set changed while the index was being built; build again")
        release_free_memory()
        return self

    def _build_table(self, lists: tuple[int, ...], depths: tuple[int, int, int]) -> _HashTable:
        """The hash table over the rows of `lists`: in Python, or with numpy when large."""
        b, plates = self._bounds, self._plates
        expected = sum(
            (b[lst + 1] - b[lst]) * _NEIGHBOURHOOD[plates.width][depths[lst]] for lst in lists)
        if expected > _VECTORISE_FROM:
            parts: list[np.ndarray] = []
            for lst in lists:
                for start in range(b[lst], b[lst + 1], _CHUNK):
                    stop = min(start + _CHUNK, b[lst + 1])
                    parts.extend(_chunk_entries(plates.fixed_width(start, stop), start,
                                                depths[lst]))
            return _HashTable(_sorted_unique(parts))
        entries: list[int] = []
        for lst in lists:
            for start in range(b[lst], b[lst + 1], _CHUNK):
                stop = min(start + _CHUNK, b[lst + 1])
                keys = [confusion_key(p).encode("ascii") for p in plates.slice(start, stop)]
                _key_entries(keys, start, depths[lst], entries)
        # Rows and (level, position) differ between a row's entries, level-2 hashes are
        # distinct per row: no duplicates to drop, unlike the vectorised build.
        entries.sort()
        return _HashTable(entries)

    def _build_tags(self, source: RuleSource) -> None:
        keys: list[int] = []
        texts: list[str] = []
        for key, text in source.iter_tags():
            keys.append(key)
            texts.append(text)
        tags, usable = _clean_texts(texts, MAX_TAG_LEN)
        self.skipped += 0 if usable is None else usable.count(False)
        self._tags = _Texts(tags)
        self._tag_keys = _key_array(keys, usable)
        if not tags:
            return
        # exact only (a tag number has no OCR errors): each tag's own hash, no confusion map
        entries = [_hash(t.encode("ascii")) << _HASH_SHIFT | row for row, t in enumerate(tags)]
        entries.sort()
        self._tag_table = _HashTable(entries)

    # --- queries ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of indexed plate rows (all lists)."""
        return self._bounds[3]

    def counts(self) -> dict[str, int]:
        """Indexed rows per list, tags and the table size (for status pages and benchmarks)."""
        b = self._bounds
        tables = (self._deny_table, self._table, self._tag_table)
        return {
            "deny": b[1] - b[0],
            "resident": b[2] - b[1],
            "visitor_pass": b[3] - b[2],
            "tag": len(self._tags),
            "entries": sum(len(t.entries) for t in tables),
            "skipped": self.skipped,
        }

    def nbytes(self) -> int:
        """Bytes held by the index (arrays, bucket starts, small dict tables, vehicle facts)."""
        arrays = (self._plates, self._keys, self._tags, self._tag_keys)
        tables = (self._deny_table, self._table, self._tag_table)
        facts = self.vehicle_facts.nbytes if self.vehicle_facts is not None else 0
        return sum(a.nbytes for a in arrays) + sum(t.nbytes for t in tables) + facts

    def effective_distance(self, list_name: str, wanted: int) -> int:
        """The fuzzy distance a query on `list_name` really gets (capped by the build depth)."""
        return max(0, min(wanted, self.depths[list_name]))

    def query(self, plate: str, ckey: str | None = None) -> PlateQuery:
        """A lookup of one normalised plate (and its confusion key, if already known)."""
        return PlateQuery(self, plate, ckey)

    def match_plate(
        self, plate: str, *, deny: int = 0, resident: int = 0, visitor_pass: int = 0
    ) -> PlateCandidates:
        """Candidates of a normalised plate in each list, within the given fuzzy distances."""
        q = PlateQuery(self, plate)
        return PlateCandidates(
            q.candidates("deny", deny),
            q.candidates("resident", resident),
            q.candidates("visitor_pass", visitor_pass),
        )

    def lookup(self, list_name: str, plate: str, max_distance: int = 0) -> tuple[Candidate, ...]:
        """Candidates of a normalised plate in one list ("deny", "resident", "visitor_pass")."""
        return PlateQuery(self, plate).candidates(list_name, max_distance)

    def match_tag(self, tag: str) -> tuple[Candidate, ...]:
        """Tags equal to a normalised tag (exact only: a tag number has no OCR errors)."""
        if tag and not _NORMALISED.fullmatch(tag):
            raise ValueError("match_tag wants a normalised tag (gated.plates.normalise)")
        if not tag or len(tag) > MAX_TAG_LEN or not len(self._tags):
            return ()
        out = []
        for entry in self._tag_table.probe(_hash(tag.encode("ascii"))):
            row = entry & _ROW_MASK
            if self._tags[row] == tag:
                match = Match(MatchKind.EXACT, TAG_LIST, tag)
                out.append(Candidate(self._tag_keys[row], match))
        return tuple(sorted(out, key=lambda c: c.key))


class PlateQuery:
    """One normalised plate being looked up; hashes and probes are computed once, when needed.

    The policy's path is `first_pass` (deny screen, exact and confusion tiers)
    and, only when that finds no resident or pass, `candidates` for the fuzzy
    tier. Both are written for few Python operations per read: this is the
    hottest code of a decision.
    """

    __slots__ = ("_cache", "_dels", "_dels2", "_h0", "_key", "_rules", "ckey", "plate")

    def __init__(self, rules: RuleIndex, plate: str, ckey: str | None = None) -> None:
        """Prepare the lookup; raises ValueError unless `plate` is normalised.

        A caller passing `ckey` (the policy, which just normalised the plate)
        vouches for the plate; it is not checked again.
        """
        if len(plate) > MAX_PLATE_LEN or (
            ckey is None and plate and not _NORMALISED.fullmatch(plate)
        ):
            raise ValueError("a plate query wants a normalised plate (gated.plates.normalise)")
        self._rules = rules
        self.plate = plate
        if ckey is None:
            ckey = confusion_key(plate)
        self.ckey = ckey
        self._key = key = ckey.encode("ascii")
        self._h0 = int.from_bytes(key, "big") * _MIX % _PRIME
        self._dels: list[int] | None = None
        self._dels2: list[int] | None = None
        self._cache: dict[int, set[int]] = {}

    def _hashes(self, level: int) -> list[int]:
        """Hashes of the read's key with `level` characters deleted (level 1: by position)."""
        if level == 0:
            return [self._h0]
        if level == 1:
            if self._dels is None:
                self._dels = _del_hashes(self._key)
            return self._dels
        if self._dels2 is None:
            self._dels2 = _del2_hashes(self._key)
        return self._dels2

    def _rows(self, deny: bool, limit: int) -> set[int]:
        """Rows of one table that may be within `limit` of the read (to be verified).

        A pair within distance d always shows up with both deletion levels <= d;
        at limit 1 a deletion of the read matches a deletion of a row only at
        the same position (a substitution there); elsewhere they differ twice.
        Cached per table and limit: residents and passes share the main table.
        """
        cache_key = limit + (4 if deny else 0)
        rows = self._cache.get(cache_key)
        if rows is not None:
            return rows
        table = self._rules._deny_table if deny else self._rules._table
        small, starts, stored, shift = table._dict, table._starts, table._entries, table._shift
        rows = set()
        add = rows.add
        h0 = self._h0
        if small is None and limit == 1:
            # The common fuzzy probe of a large table, spelled out: iterating a
            # memoryview slice yields ints without building a list, and the
            # accepted tags (hash << 6 | position << 2 | level) are precomputed.
            b = h0 >> shift
            for e in stored[starts[b] : starts[b + 1]]:
                if e >> _HASH_SHIFT == h0 and (e >> _ROW_BITS) & _LEVEL_MASK <= 1:
                    add(e & _ROW_MASK)
            same_place = 1  # position 0, level 1
            for h in self._hashes(1):
                b = h >> shift
                first = starts[b]
                end = starts[b + 1]
                if first != end:
                    own_key = h << 6
                    here = own_key | same_place
                    for e in stored[first:end]:
                        tag = e >> _ROW_BITS
                        # two comparisons beat a tuple test here (measured)
                        if tag == own_key or tag == here:  # noqa: SIM109
                            add(e & _ROW_MASK)
                same_place += 4
            self._cache[cache_key] = rows
            return rows
        hashes: list[int] = [h0]
        if limit:
            hashes = hashes + self._hashes(1)
        if limit == 2:
            hashes = hashes + self._hashes(2)
        n = len(self._key)
        for qi, h in enumerate(hashes):
            if small is not None:
                entries = small.get(h)
                if entries is None:
                    continue
            else:
                b = h >> shift
                first = starts[b]
                end = starts[b + 1]
                if first == end:
                    continue
                entries = stored[first:end].tolist()
            # above its row, an entry holds hash << 6 | position << 2 | level
            if qi == 0:  # the read's key: a row's own key or any of its deletions
                for e in entries:
                    if e >> _HASH_SHIFT == h and (e >> _ROW_BITS) & _LEVEL_MASK <= limit:
                        add(e & _ROW_MASK)
            elif qi <= n and limit == 1:  # the read less one character, at position qi - 1
                accept = (h << 6, h << 6 | (qi - 1) << 2 | 1)  # a row's key; same place
                for e in entries:
                    if e >> _ROW_BITS in accept:
                        add(e & _ROW_MASK)
            else:  # limit 2: any level up to 2 on both sides
                for e in entries:
                    if e >> _HASH_SHIFT == h and (e >> _ROW_BITS) & _LEVEL_MASK <= 2:
                        add(e & _ROW_MASK)
        self._cache[cache_key] = rows
        return rows

    def _deny_maybe(self, limit: int) -> bool:
        """False when no deny-listed plate can be within `limit` of the read (cheap, exact)."""
        screen = self._rules._deny_screen
        if screen is None:  # a hotlist too large for the string screen: probe by hashes
            return bool(self._rows(True, limit))
        ckey = self.ckey
        if ckey in screen:
            return True
        if not limit or not screen:
            return False
        n = len(ckey)
        if limit == 1:
            # a first look at two halves of the read rules out most reads for a
            # fraction of the cost of making all of its deletions (see `_halves`)
            halves = self._rules._deny_halves.get(n)
            if halves is None:
                return False
            h = n // 2
            if ckey[:h] not in halves[0] and ckey[h:] not in halves[1]:
                return False
        dels: Iterable[str] = map("".join, combinations(ckey, n - 1))
        if limit == 2 and n > 1:
            dels = chain(dels, map("".join, combinations(ckey, n - 2)))
        return not screen.isdisjoint(dels)

    def first_pass(
        self, deny_distance: int
    ) -> tuple[tuple[Candidate, ...], tuple[Candidate, ...], tuple[Candidate, ...]]:
        """(deny within deny_distance, exact/confusion residents, exact/confusion passes).

        The same answers as three `candidates` calls, fused for the policy's
        common path: the deny list is screened with one set test over the
        read's deletions, and the main table is probed once with the read's key.
        """
        rules = self._rules
        b0, b1, b2, b3 = rules._bounds
        plate = self.plate
        if not plate:
            return (), (), ()
        deny: tuple[Candidate, ...] = ()
        if b1 > b0 and self._deny_maybe(max(0, min(deny_distance, rules.depths["deny"]))):
            deny = self.candidates("deny", deny_distance)
        if b3 == b1:
            return deny, (), ()
        h = self._h0
        table = rules._table
        if table._dict is not None:
            entries = table._dict.get(h, _NONE)
        else:
            b = h >> table._shift
            first, end = table._starts[b], table._starts[b + 1]
            entries = table._entries[first:end].tolist() if first != end else _NONE
        resident: list[Candidate] = []
        visitor: list[Candidate] = []
        same_key = h << 6  # hash, position 0, level 0: the row's own key
        for entry in entries:
            if entry >> _ROW_BITS != same_key:
                continue
            row = entry & _ROW_MASK
            stored = rules._plates[row]
            if row < b2:
                match = _verify(plate, self.ckey, stored, "resident", 0)
                if match is not None:
                    resident.append(Candidate(rules._keys[row], match, row))
            else:
                match = _verify(plate, self.ckey, stored, "visitor_pass", 0)
                if match is not None:
                    visitor.append(Candidate(rules._keys[row], match, row))
        if len(resident) > 1:
            resident.sort(key=_candidate_order)
        if len(visitor) > 1:
            visitor.sort(key=_candidate_order)
        return deny, tuple(resident), tuple(visitor)

    def fuzzy_pass(
        self, resident_distance: int, pass_distance: int
    ) -> tuple[tuple[Candidate, ...], tuple[Candidate, ...]]:
        """(residents, passes) within the given distances, fuzzy edits left empty.

        The same answers as ``candidates("resident", resident_distance,
        with_edits=False)`` and ``candidates("visitor_pass", pass_distance,
        with_edits=False)``, in one walk over the main table's rows: the
        policy's fuzzy tier, asked when `first_pass` found no resident or pass.
        """
        rules = self._rules
        depths = rules.depths
        r_limit = max(0, min(resident_distance, depths["resident"]))
        p_limit = max(0, min(pass_distance, depths["visitor_pass"]))
        _, b1, b2, b3 = rules._bounds
        if not self.plate or b3 == b1:
            return (), ()
        resident: list[Candidate] = []
        visitor: list[Candidate] = []
        plates, keys = rules._plates, rules._keys
        plate, ckey = self.plate, self.ckey
        for row in self._rows(False, max(r_limit, p_limit)):
            stored = plates[row]
            if row < b2:
                match = _verify(plate, ckey, stored, "resident", r_limit, False)
                if match is not None:
                    resident.append(Candidate(keys[row], match, row))
            else:
                match = _verify(plate, ckey, stored, "visitor_pass", p_limit, False)
                if match is not None:
                    visitor.append(Candidate(keys[row], match, row))
        if len(resident) > 1:
            resident.sort(key=_candidate_order)
        if len(visitor) > 1:
            visitor.sort(key=_candidate_order)
        return tuple(resident), tuple(visitor)

    def candidates(
        self, list_name: str, max_distance: int = 0, *, with_edits: bool = True
    ) -> tuple[Candidate, ...]:
        """Entries of one list matching the plate, best first (exact, confusion, by distance).

        with_edits=False leaves fuzzy matches' edits empty (the policy fills
        them in only for the match it reports; see `with_edits`).
        """
        rules = self._rules
        lst = _LIST_INDEX.get(list_name)
        if lst is None:
            raise ValueError(f"unknown list {list_name!r} (one of {', '.join(LISTS)})")
        limit = max(0, min(max_distance, rules.depths[list_name]))
        lo, hi = rules._bounds[lst], rules._bounds[lst + 1]
        if not self.plate or lo == hi:
            return ()
        found = []
        plates, keys = rules._plates, rules._keys
        plate, ckey = self.plate, self.ckey
        for row in self._rows(lst == 0, limit):
            if lo <= row < hi:
                stored = plates[row]
                match = _verify(plate, ckey, stored, list_name, limit, with_edits)
                if match is not None:
                    found.append(Candidate(keys[row], match, row))
        if len(found) > 1:
            found.sort(key=_candidate_order)
        return tuple(found)


def with_edits(plate: str, match: Match) -> Match:
    """The match with its edits filled in (for one made with with_edits=False)."""
    if match.edits or match.kind == MatchKind.EXACT:
        return match
    return Match(match.kind, match.list, match.stored, match.distance, edits(plate, match.stored))


def slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of a frozen slots dataclass, if its fields are exactly `names`."""
    fields = tuple(f.name for f in dataclasses.fields(cls))
    if fields != names or getattr(cls, "__slots__", None) != names:
        return ()
    if hasattr(cls, "__post_init__"):
        return ()
    return tuple(getattr(cls, n).__set__ for n in names)


# A frozen dataclass's __init__ goes through object.__setattr__ once per field,
# about three times the cost of setting its slots directly; a decision makes a
# Match per verified candidate and one Decision. Same type, same fields set:
# the objects are indistinguishable. If the model's fields ever differ from
# these, the setters are empty and the class itself is used.
_MATCH_SETTERS = slot_setters(Match, ("kind", "list", "stored", "distance", "edits"))


def new_match(
    kind: MatchKind, list_name: str, stored: str, distance: int = 0, edits: tuple[Edit, ...] = ()
) -> Match:
    """Match(kind, list_name, stored, distance, edits), made without the dataclass __init__."""
    if not _MATCH_SETTERS:
        return Match(kind, list_name, stored, distance, edits)
    m = object.__new__(Match)
    s_kind, s_list, s_stored, s_distance, s_edits = _MATCH_SETTERS
    s_kind(m, kind)
    s_list(m, list_name)
    s_stored(m, stored)
    s_distance(m, distance)
    s_edits(m, edits)
    return m


def _verify(
    plate: str, ckey: str, stored: str, name: str, limit: int, want_edits: bool = True
) -> Match | None:
    """How `plate` matches `stored`, if within `limit` (fuzzy distance on confusion keys)."""
    if stored == plate:
        return new_match(MatchKind.EXACT, name, stored)
    skey = stored.translate(CONFUSION_TABLE)
    if skey == ckey:
        # same key, same length: the differences are the confused characters themselves
        pairs = enumerate(zip(plate, stored, strict=True))
        subs = tuple(new_edit("sub", i, r, t) for i, (r, t) in pairs if r != t)
        return new_match(MatchKind.CONFUSION, name, stored, 0, subs)
    if limit <= 0:
        return None
    # gated.plates.distance without its call: this runs for every fuzzy candidate row
    d = Levenshtein.distance(ckey, skey, score_cutoff=limit)
    if d > limit:
        return None
    return new_match(MatchKind.FUZZY, name, stored, d, edits(plate, stored) if want_edits else ())


def _deletion_strings(plates: list[str], depth: int) -> frozenset[str] | None:
    """Confusion keys of the deny rows and their deletions up to `depth` (None if too many).

    The decision's first question for every read is "could this be a deny-listed
    plate?"; with these strings it is one C-level set test over the read's own
    deletions (made by itertools, no Python loop), instead of hashing each of
    them. A hotlist too large for a set of strings is screened by hashes.
    """
    size = sum(_NEIGHBOURHOOD[min(len(p), MAX_PLATE_LEN)][depth] for p in plates)
    if size > _SCREEN_MAX:
        return None
    out: set[str] = set()
    for plate in plates:
        key = confusion_key(plate)
        out.add(key)
        for level in range(1, min(depth, len(key)) + 1):
            out.update(map("".join, combinations(key, len(key) - level)))
    return frozenset(out)


_LIBC: list[Any] = []  # the C library when it is glibc (malloc_trim, mallopt), else None
_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)
_MMAP_THRESHOLD = 128 * 1024  # glibc's default: larger blocks get their own mapping


def _glibc() -> Any:
    if not _LIBC:
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            libc.malloc_trim, libc.mallopt  # noqa: B018 - AttributeError off glibc
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


def release_free_memory() -> None:
    """Hand memory freed by a build back to the OS, where the C library allows it (glibc).

    A build frees tens of MB of temporaries (row lists, hash chunks); glibc
    keeps freed heap pages mapped, so without this a Pi would carry them as
    resident memory until the next build reuses them. Elsewhere a no-op.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def pin_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its default, 128 KiB, from now on (glibc only).

    glibc raises the threshold to the size of any mapped block that is freed (up to
    32 MB): after one large temporary (scrypt's 16 MB at a status-page login, a big
    camera push) every smaller block comes from the heap, and an index build's
    temporaries then stay resident in pieces malloc_trim cannot hand back (18 MB
    more with 40,000 vehicles, measured: docs/operations.md, "Idle footprint").
    Set explicitly, the threshold no longer moves. Called by every build.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def _halves(plates: list[str]) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
    """Per read length n: the deny keys' first n // 2 characters and their last n - n // 2.

    A read key R of length n within one edit of a deny key D starts with
    D[:n // 2] or ends with D's last n - n // 2 characters: the edit is either
    at or after position n // 2 (the head is intact) or before it (the tail
    R[n // 2:] is intact and ends both strings, whatever the edit was). D then
    has n - 1, n or n + 1 characters, which is all the table needs to list.
    """
    heads: dict[int, set[str]] = {}
    tails: dict[int, set[str]] = {}
    for plate in plates:
        key = confusion_key(plate)
        size = len(key)
        for n in (size - 1, size, size + 1):
            if n < 1:
                continue
            h = n // 2
            heads.setdefault(n, set()).add(key[:h])
            tails.setdefault(n, set()).add(key[size - (n - h) :])
    return {n: (frozenset(heads[n]), frozenset(tails[n])) for n in heads}


def _candidate_order(c: Candidate) -> tuple[int, int, str, int]:
    return (_KIND_RANK[c.match.kind], c.match.distance, c.match.stored, c.key)
