"""Event → row preparation: the fast path agrees with the checked path; stable canonical bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import msgspec
import pytest
from hypothesis import event as event_note
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.errors import JournalError
from gated.journal.rows import (
    _SALTS,
    ADDED,
    COLUMNS,
    HASHED,
    POS_EVENT_ID,
    POS_PREV_HASH,
    POS_ROW_HASH,
    POS_SEQ,
    POS_SYNCED_AT,
    _prepare_checked,
    _prepare_fast,
    canonical,
    prepare,
    prepare_values,
    row_hash,
    values_hash,
)
from gated.model import AccessEvent, AuditEvent
from tests.journal.journal_child import access_event, audit_event


def reference_canonical(stream: str, row: dict[str, Any]) -> bytes:
    """The canonical form as first specified: sorted-key JSON of a dict of hashed columns.

    Columns a later migration added are left out while all of them are NULL, so rows
    written before it keep their hashes.
    """
    legacy = all(row[name] is None for name in ADDED[stream])
    content = {
        name: row[name]
        for name in HASHED[stream]
        if not (legacy and name in ADDED[stream])
    }
    content["stream"] = stream
    return msgspec.json.encode(content, order="sorted")


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), st.binary(max_size=8),
)


@settings(max_examples=200)
@given(stream=st.sampled_from(sorted(COLUMNS)), data=st.data())
def test_canonical_bytes_equal_the_sorted_dict_encoding(stream: str, data: st.DataObject) -> None:
    row = {name: data.draw(scalars, label=name) for name in COLUMNS[stream]}
    assert canonical(stream, row) == reference_canonical(stream, row)
    values = [row[name] for name in COLUMNS[stream]]
    assert values_hash(stream, values) == hashlib.sha256(canonical(stream, row)).hexdigest()


async def test_canonical_of_journaled_rows_matches_the_reference() -> None:
    for event in (access_event(), access_event(visitor_name="Zoë", pass_id="p1"),
                  audit_event(), audit_event(ip_address=None, user_agent=None)):
        stream, row = prepare(event)
        row.update(seq=7, prev_hash="ab" * 32, synced_at=None)
        assert canonical(stream, row) == reference_canonical(stream, row)
        assert len(row_hash(stream, row)) == 64


texts = st.one_of(
    st.none(), st.just(""), st.text(max_size=10), st.text(min_size=4090, max_size=4100),
    st.just("\ud800"), st.just("../x"), st.just("/abs"), st.just("a/../b"), st.just("a..b"),
    st.integers(), st.sampled_from(["entry", "exit", "in", "out", "success", "failure"]),
)
numbers = st.one_of(
    st.none(), st.floats(), st.integers(-(2**64), 2**64), st.booleans(), st.just("1.5"),
)
flags = st.one_of(st.booleans(), st.sampled_from([0, 1, 2, None, "yes"]))
jsons = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4),
                               max_size=3),
    st.just({"x": object()}), st.just({"big": "y" * 70_000}), st.just([("a", 1)]), st.just(3),
)


def _vary(event: AccessEvent | AuditEvent, data: st.DataObject) -> AccessEvent | AuditEvent:
    changes: dict[str, Any] = {}
    fields = data.draw(st.lists(st.sampled_from(dataclasses.fields(event)), max_size=3,
                                unique=True), label="fields")
    for f in fields:
        value = getattr(event, f.name)
        if f.name in ("metadata", "old_values", "new_values"):
            strategy = jsons
        elif f.name in ("clock_unsynced", "snapshot_missing"):
            strategy = flags
        elif f.name == "event_id":
            strategy = st.sampled_from([value + "\n", value.upper(), "x", None, 7, [value]])
        elif isinstance(value, str) or (value is None and f.name not in (
                "confidence_score", "read_to_relay_ms", "duration_ms")):
            strategy = texts | st.just([1])  # unhashable values, too
        else:
            strategy = numbers
        changes[f.name] = data.draw(strategy, label=f.name)
    return dataclasses.replace(event, **changes)


@settings(max_examples=300)
@given(audit=st.booleans(), data=st.data())
def test_fast_path_agrees_with_the_checked_path(audit: bool, data: st.DataObject) -> None:
    event = _vary(audit_event() if audit else access_event(), data)
    salt = os.urandom(16)
    fast = _prepare_fast(event, salt)
    try:
        stream, checked = _prepare_checked(event, salt)
    except JournalError:
        assert fast is None  # the fast path never accepts what the checked path refuses
        event_note("refused")
        return
    event_note("fast" if fast is not None else "checked")
    if fast is not None:
        expected = [checked.get(name) for name in COLUMNS[stream]]
        assert fast == (stream, expected)
        assert list(map(type, fast[1])) == list(map(type, expected))


def test_value_lists_and_dict_rows_agree() -> None:
    for cols in COLUMNS.values():
        positions = (POS_SEQ, POS_EVENT_ID, POS_PREV_HASH, POS_ROW_HASH, POS_SYNCED_AT)
        assert [cols[i] for i in positions] == [
            "seq", "event_id", "prev_hash", "row_hash", "synced_at"]
    for event in (access_event(), audit_event(), access_event(confidence_score=1)):
        stream, values = prepare_values(event)
        values[POS_SEQ], values[POS_PREV_HASH] = 3, "cd" * 32
        row = dict(zip(COLUMNS[stream], values, strict=True))
        assert values_hash(stream, values) == row_hash(stream, row)
        _, public = prepare(event)
        assert set(public) == set(COLUMNS[stream]) - {"seq", "prev_hash", "row_hash",
                                                      "synced_at"}


def test_the_common_events_take_the_fast_path() -> None:
    assert _prepare_fast(access_event(), b"s" * 16) is not None
    assert _prepare_fast(access_event(vehicle_plate="ÄB-123", visitor_name=None),
                         b"s" * 16) is not None
    assert _prepare_fast(audit_event(), b"s" * 16) is not None


@pytest.mark.parametrize(
    ("event", "match"),
    [
        (access_event(event_type=["entry"]), "event_type"),
        (access_event(direction={}), "direction"),
        (audit_event(status=["success"]), "status"),
        (access_event(event_id=access_event().event_id + "\n"), "event_id"),
    ],
)
def test_unhashable_or_trailing_newline_values_are_refused(event: Any, match: str) -> None:
    with pytest.raises(JournalError, match=match):
        prepare(event)


def test_salts_are_fresh_per_row_and_personal_free_rows_have_none() -> None:
    salts = {prepare(access_event())[1]["pii_salt"] for _ in range(600)}
    assert len(salts) == 600 and all(isinstance(s, bytes) and len(s) == 16 for s in salts)
    assert prepare(access_event(vehicle_plate=None))[1]["pii_salt"] is None
    assert prepare(audit_event(ip_address=None, user_agent=None))[1]["pii_salt"] is None


def test_a_forked_child_never_reuses_the_parents_salts() -> None:
    _SALTS.take()  # make sure the pool is filled before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one salt and leave without running pytest's teardown
        os.write(write_end, _SALTS.take())
        os._exit(0)
    os.close(write_end)
    child_salt = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_salt) == 16
    assert child_salt != _SALTS.take()
