"""Rule-set files: examples import, export round-trips, every bad row is reported by line."""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gated.errors import RulesError
from gated.plates import normalise
from gated.rules import files as rule_files
from gated.rules.entities import (
    DenyEntry,
    Group,
    Resident,
    Schedule,
    Tag,
    TimeWindow,
    Vehicle,
    VisitorPass,
)
from gated.rules.files import (
    export_rules,
    fmt_days,
    import_rules,
    parse_days,
    parse_timestamp,
)
from gated.rules.store import KINDS, InvalidRulesError, RuleSetData, RuleStore

CONFIG = Path(__file__).resolve().parents[2] / "config"
AMS = zoneinfo.ZoneInfo("Europe/Amsterdam")


@pytest.fixture
def store(tmp_path: Path) -> RuleStore:
    s = RuleStore(tmp_path / "rules.sqlite3")
    yield s
    s.close()


def snapshot(store: RuleStore) -> dict[str, list[object]]:
    return {k: list(store.entities(k)) for k in KINDS}


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(store: RuleStore, path: Path, **kw: object) -> list[tuple[object, ...]]:
    with pytest.raises(InvalidRulesError) as err:
        import_rules(store, path, **kw)  # type: ignore[arg-type]
    return [(p.file, p.line, p.field, p.message) for p in err.value.problems]


# --- the shipped examples ------------------------------------------------------


def test_the_example_csv_folder_and_json_import_to_the_same_rule_set(tmp_path: Path) -> None:
    with RuleStore(tmp_path / "a.sqlite3") as a, RuleStore(tmp_path / "b.sqlite3") as b:
        ra = import_rules(a, CONFIG / "rules.example", tz=AMS)
        rb = import_rules(b, CONFIG / "rules.example.json", tz=AMS)
        assert ra.version == rb.version == 1
        assert (
            ra.counts
            == rb.counts
            == {
                "schedules": 2,
                "groups": 3,
                "residents": 5,
                "vehicles": 4,
                "tags": 2,
                "visitor_passes": 2,
                "deny_list": 2,
            }
        )
        assert snapshot(a) == snapshot(b)
        p1 = a.visitor_pass(a.key_of("visitor_passes", "p-001"))
        assert p1.valid_from == dt.datetime(2025, 6, 1, 8, tzinfo=AMS).timestamp()
        assert a.schedule("office").exceptions[dt.date(2025, 12, 25)] == ()
        assert a.resident("r-005").access_points is None
        assert a.group("staff").access_points == frozenset({"main-in", "main-out"})


def test_the_docs_examples_import(tmp_path: Path) -> None:
    doc = (CONFIG.parent / "docs" / "rules-format.md").read_text(encoding="utf-8")
    blocks = doc.split("```")[1::2]
    csv_blocks = [b for b in blocks if b.startswith("csv ")]
    json_blocks = [b for b in blocks if b.startswith("json\n")]
    assert csv_blocks and json_blocks
    folder = tmp_path / "doc"
    for block in csv_blocks:
        first, _, body = block.partition("\n")
        write(folder, first.split()[1], body)
    with RuleStore(tmp_path / "a.sqlite3") as a:
        import_rules(a, folder, tz=AMS)
        assert a.counts()["vehicles"] > 0
    for i, block in enumerate(json_blocks):
        path = write(tmp_path, f"doc{i}.json", block.removeprefix("json\n"))
        with RuleStore(tmp_path / f"j{i}.sqlite3") as j:
            import_rules(j, path, tz=AMS)


# --- round trips ---------------------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,8}\Z")
free_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)
plates = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9 .-]{0,9}\Z")
times = st.builds(
    dt.time, st.integers(0, 23), st.sampled_from([0, 15, 30, 59]), st.sampled_from([0, 0, 30])
)
stamps = st.integers(0, 4_000_000_000).map(float)
aps = st.none() | st.frozensets(ids, max_size=3)


@st.composite
def rule_sets(draw: st.DrawFn) -> RuleSetData:
    windows = st.builds(TimeWindow, st.frozensets(st.integers(0, 6), min_size=1), times, times)
    spans = st.lists(st.tuples(times, times), max_size=2).map(tuple)
    sched_ids = draw(st.lists(ids, unique=True, max_size=3))
    schedules = tuple(
        Schedule(
            i,
            draw(free_text),
            tuple(draw(st.lists(windows, max_size=3))),
            draw(
                st.dictionaries(
                    st.dates(dt.date(2000, 1, 1), dt.date(2099, 1, 1)), spans, max_size=3
                )
            ),
        )
        for i in sched_ids
    )
    maybe_sched = st.none() | st.sampled_from(sched_ids) if sched_ids else st.none()
    group_ids = draw(st.lists(ids, unique=True, max_size=3))
    groups = tuple(Group(i, draw(free_text), draw(aps), draw(maybe_sched)) for i in group_ids)
    res_ids = draw(st.lists(ids, unique=True, min_size=1, max_size=4))
    residents = tuple(
        Resident(
            i,
            draw(free_text),
            draw(free_text),
            draw(st.booleans()),
            tuple(draw(st.lists(st.sampled_from(group_ids), unique=True))) if group_ids else (),
            draw(aps),
            draw(maybe_sched),
        )
        for i in res_ids
    )
    owner = st.sampled_from(res_ids)
    vplates = draw(st.lists(plates, unique_by=normalise, max_size=5))
    vehicles = tuple(
        Vehicle(f"v{n}", p, draw(owner), draw(st.booleans()), draw(free_text))
        for n, p in enumerate(vplates)
    )
    tags = tuple(
        Tag(f"t{n}", p, draw(owner), draw(st.booleans()))
        for n, p in enumerate(draw(st.lists(plates, unique_by=normalise, max_size=3)))
    )
    passes = []
    for n in range(draw(st.integers(0, 3))):
        start = draw(stamps)
        passes.append(
            VisitorPass(
                f"p{n}",
                draw(plates),
                draw(owner),
                start,
                start + draw(st.integers(1, 10**7)),
                draw(free_text),
                draw(st.none() | st.frozensets(ids, min_size=1, max_size=3)),
                draw(st.none() | st.integers(1, 1000)),
            )
        )
    deny = tuple(
        DenyEntry(f"d{n}", p, draw(free_text), draw(st.none() | stamps))
        for n, p in enumerate(draw(st.lists(plates, unique_by=normalise, max_size=3)))
    )
    return RuleSetData(schedules, groups, residents, vehicles, tags, tuple(passes), deny)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_sets(), st.sampled_from(["json", "csv"]), st.sampled_from(["UTC", "Europe/Amsterdam"]))
def test_export_then_import_round_trips_exactly(ruleset: RuleSetData, fmt: str, tz: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with RuleStore(d / "a.sqlite3") as a, RuleStore(d / "b.sqlite3") as b:
            a.replace_all(ruleset, actor="t", source="test")
            out = d / ("out.json" if fmt == "json" else "out")
            export_rules(a, out, fmt, tz=tz)  # type: ignore[arg-type]
            import_rules(b, out, tz=tz)
            for kind in KINDS:
                assert list(b.entities(kind)) == list(getattr(ruleset, kind)), kind
            # and once more: the second export is byte-identical
            again = d / ("again.json" if fmt == "json" else "again")
            export_rules(b, again, fmt, tz=tz)  # type: ignore[arg-type]
            if fmt == "json":
                assert again.read_bytes() == out.read_bytes()
            else:
                for kind in KINDS:
                    name = f"{kind}.csv"
                    assert (again / name).read_bytes() == (out / name).read_bytes()


def test_export_json_to_a_stream(store: RuleStore) -> None:
    import_rules(store, CONFIG / "rules.example.json", tz=AMS)
    buf = io.StringIO()
    export_rules(store, buf, "json", tz=AMS)
    doc = json.loads(buf.getvalue())
    assert doc["format"] == "gated-rules" and doc["format_version"] == 1
    assert doc["vehicles"][0]["plate"] == "AB-123-C"
    assert doc["visitor_passes"][0]["valid_from"] == "2025-06-01T08:00:00+02:00"


# --- modes and atomicity -------------------------------------------------------


def test_a_bad_file_leaves_the_previous_version_untouched(store: RuleStore, tmp_path: Path) -> None:
    import_rules(store, CONFIG / "rules.example", tz=AMS)
    before = snapshot(store)
    bad = tmp_path / "bad"
    write(bad, "residents.csv", "id,name\nr-001,Ann\n")  # would delete residents still referenced
    write(bad, "vehicles.csv", "plate,resident_id\nNEW-1,r-001\nNEW-2,\n")
    with pytest.raises(InvalidRulesError) as err:
        import_rules(store, bad, tz=AMS)
    assert ("vehicles.csv", 3, "resident_id", "is required") in [
        (p.file, p.line, p.field, p.message) for p in err.value.problems
    ]
    assert store.version == 1
    assert snapshot(store) == before


def test_full_replace_replaces_only_the_kinds_in_the_input(
    store: RuleStore, tmp_path: Path
) -> None:
    import_rules(store, CONFIG / "rules.example", tz=AMS)
    path = write(tmp_path, "vehicles.csv", "id,plate,resident_id\nv-002,12-XYZ-3,r-002\n")
    result = import_rules(store, path)
    assert result.version == 2
    assert result.counts == {"vehicles": 1} and result.deleted == {"vehicles": 3}
    assert [v.id for v in store.entities("vehicles")] == ["v-002"]
    assert store.counts()["residents"] == 5  # untouched


def test_merge_upserts_and_deletes_nothing(store: RuleStore, tmp_path: Path) -> None:
    import_rules(store, CONFIG / "rules.example", tz=AMS)
    path = write(
        tmp_path,
        "vehicles.json",
        '{"format": "gated-rules", "format_version": 1, "vehicles": ['
        '{"id": "v-002", "plate": "12-XYZ-3", "resident_id": "r-002", "description": "red"},'
        '{"id": "v-009", "plate": "NEW-99", "resident_id": "r-001"}]}',
    )
    result = import_rules(store, path, merge=True, actor="ann")
    assert result.merge and result.written == {"vehicles": 2} and result.deleted == {"vehicles": 0}
    assert store.counts()["vehicles"] == 5
    assert store.get("vehicles", "v-002").description == "red"
    cs = store.changesets(1)[0]
    assert (cs.actor, cs.source, cs.sha256) == (
        "ann",
        "import vehicles.json (merge)",
        result.sha256,
    )


def test_merge_still_refuses_a_plate_another_vehicle_has(store: RuleStore, tmp_path: Path) -> None:
    import_rules(store, CONFIG / "rules.example", tz=AMS)
    path = write(tmp_path, "vehicles.csv", "id,plate,resident_id\nv-100,gh-45-jk,r-001\n")
    assert problems_of(store, path, merge=True) == [
        (
            "vehicles.csv",
            2,
            "plate",
            "vehicle 'v-100': plate 'GH45JK' is already used by vehicle 'v-003'",
        )
    ]


# --- CSV problems, each with its line ------------------------------------------


def test_every_bad_csv_row_is_reported_with_line_and_field(
    store: RuleStore, tmp_path: Path
) -> None:
    d = tmp_path / "in"
    write(d, "schedules.csv", "id,windows,exceptions\ns1,mon-fry 07:00-19:00,2025-13-01 closed\n")
    write(
        d,
        "residents.csv",
        "id,name,active,groups,schedule_id\n"
        "r1,Ann,maybe,,\n"
        '"r 2","Bob\nSmith",yes,nogroup,\n'
        "r3,Carl,,,s1\n"
        "r1,Again,,,\n",
    )
    write(
        d,
        "vehicles.csv",
        "plate,resident_id\nAB-1,r3\nab 1,r3\n--,r3\nCD-2,r3,extra\nEF-3\nGH-4,ghost\n",
    )
    write(
        d,
        "visitor_passes.csv",
        "id,plate,host_resident_id,valid_from,valid_until,max_uses\n"
        "p1,KL-1,r3,2025-06-01T08:00,2025-06-01T07:00,2\n"
        "p2,KL-2,r3,yesterday,2025-03-30T02:30,-1\n",
    )
    got = problems_of(store, d, tz=AMS)
    assert (
        got
        == [
            ("residents.csv", 2, "active", "'maybe' is not true/false (or yes/no, 1/0)"),
            (
                "residents.csv",
                3,
                "id",
                "id 'r 2' is not valid: 1-64 characters A-Z a-z 0-9 _ . -, "
                "starting with a letter or digit",
            ),
            ("residents.csv", 3, "name", "contains control characters (tab, newline, NUL …)"),
            ("residents.csv", 4, "schedule_id", "schedule 's1' is itself invalid (line 2)"),
            ("residents.csv", 6, "id", "duplicate resident id 'r1' (first on line 2)"),
            ("schedules.csv", 2, "exceptions", "'2025-13-01' is not a date (YYYY-MM-DD)"),
            ("schedules.csv", 2, "windows", "'fry' is not a weekday (mon tue wed thu fri sat sun)"),
            ("vehicles.csv", 3, "id", "duplicate vehicle id 'AB1' (first on line 2)"),
            ("vehicles.csv", 4, "plate", "'--' has no letters or digits"),
            ("vehicles.csv", 5, "", "row has 3 cells, the header has 2"),
            ("vehicles.csv", 6, "", "row has 1 cells, the header has 2"),
            ("vehicles.csv", 7, "resident_id", "no resident with id 'ghost'"),
            ("visitor_passes.csv", 2, "valid_until", "must be later than valid_from"),
            (
                "visitor_passes.csv",
                3,
                "valid_from",
                "'yesterday' is not an ISO 8601 time like 2025-06-01T08:00",
            ),
            (
                "visitor_passes.csv",
                3,
                "valid_until",
                "'2025-03-30T02:30' does not exist in "
                "Europe/Amsterdam (clock change); give an offset",
            ),
            ("visitor_passes.csv", 3, "max_uses", "'-1' is not a whole number"),
        ]
        or got
    )  # keep the full list visible on failure
    assert store.version == 0


def test_csv_header_problems(store: RuleStore, tmp_path: Path) -> None:
    path = write(tmp_path, "vehicles.csv", "# comment\nplate,owner,plate\n")
    assert problems_of(store, path) == [
        (
            "vehicles.csv",
            2,
            "owner",
            "unknown column; allowed: id, plate, resident_id, active, description",
        ),
        ("vehicles.csv", 2, "plate", "column appears more than once"),
        ("vehicles.csv", 2, "resident_id", "required column is missing"),
    ]
    empty = write(tmp_path / "e", "tags.csv", "\n\n")
    assert problems_of(store, empty) == [
        ("tags.csv", None, "", "no header row (expected: id,tag,resident_id,active)")
    ]


def test_csv_encoding_problems_name_the_line(store: RuleStore, tmp_path: Path) -> None:
    path = tmp_path / "residents.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,name\r\nr1,Ann\r\nr2,Ren\xe9\r\nr3,N\x00L\r\n"
        + b"r4,"
        + b"x" * 20000
        + b"\r\nr5,ok\r\n"
    )
    assert problems_of(store, path) == [
        ("residents.csv", 3, "", "not UTF-8 (byte 7 of the line); save as 'CSV UTF-8'"),
        ("residents.csv", 4, "", "contains NUL bytes"),
        ("residents.csv", 5, "", "line is longer than 16384 bytes"),
    ]
    utf16 = tmp_path / "u" / "residents.csv"
    utf16.parent.mkdir()
    utf16.write_bytes("id,name\nr1,Ann\n".encode("utf-16"))
    assert problems_of(store, utf16) == [
        ("residents.csv", 1, "", "the file is UTF-16 text; save it as 'CSV UTF-8' instead")
    ]


def test_csv_file_names_must_say_what_they_hold(store: RuleStore, tmp_path: Path) -> None:
    d = tmp_path / "in"
    write(d, "people.csv", "id\nr1\n")
    write(d, "site-residents.csv", "id\nr1\n")
    write(d, "residents.csv", "id\nr1\n")
    got = problems_of(store, d)
    assert [g[3] for g in got] == [
        "people.csv: cannot tell what it holds; name it <kind>.csv, kind one of: "
        + ", ".join(KINDS),
        "site-residents.csv and residents.csv both hold residents",
    ]
    with pytest.raises(RulesError, match=r"no \.csv files"):
        import_rules(store, tmp_path / "in" / "..", fmt="csv")


def test_too_many_rows_is_a_clear_error(
    store: RuleStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rule_files, "MAX_ROWS", 3)
    path = write(tmp_path, "residents.csv", "id\n" + "".join(f"r{i}\n" for i in range(10)))
    assert problems_of(store, path) == [
        ("residents.csv", 5, "", "more than 3 rows; split the file")
    ]


def test_the_report_lists_every_problem_readably(store: RuleStore, tmp_path: Path) -> None:
    path = write(tmp_path, "vehicles.csv", "plate,resident_id\n" + "--,r1\n" * 600)
    with pytest.raises(InvalidRulesError) as err:
        import_rules(store, path)
    e = err.value
    assert e.total == len(e.problems) == 600
    text = str(e)
    assert text.startswith("vehicles.csv was not imported: 600 problem(s), nothing was changed\n")
    assert "\n  vehicles.csv line 2, plate: '--' has no letters or digits\n" in text
    assert text.endswith("\n  … and 100 more")


# --- JSON problems -------------------------------------------------------------


def test_every_bad_json_element_is_reported_with_index_and_line(
    store: RuleStore, tmp_path: Path
) -> None:
    doc = """{"format": "gated-rules", "format_version": 1,
"residents": [
  {"id": "r1"},
  {"id": "r2", "colour": "red"},
  "r3",
  {"id": "r4", "active": "perhaps", "id": "r5"}
],
"vehicles": [{"plate": "AB1", "resident_id": "r9"}],
"extra": 1
}"""
    path = write(tmp_path, "rules.json", doc)
    assert problems_of(store, path) == [
        (
            "",
            4,
            "residents[1].colour",
            "unknown key; allowed: id, name, unit, active, groups, access_points, schedule_id",
        ),
        ("", 5, "residents[2]", "expected an object {…}"),
        ("", 6, "residents[3].id", "key appears more than once"),
        ("", 6, "residents[3].active", "'perhaps' is not true/false (or yes/no, 1/0)"),
        ("", 8, "resident_id", "no resident with id 'r9'"),
        ("", 9, "extra", "unknown key; allowed: format, format_version, " + ", ".join(KINDS)),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"format": "gated-rules",\n "format_version": 1,\n "vehicles": [\n {"plate": }]}',
            (4, "", "invalid JSON: Expecting value (column 12); stopped reading here"),
        ),
        (
            "[1, 2]",
            (
                1,
                "",
                "invalid JSON: expected a JSON object {…} at the top (column 1); "
                "stopped reading here",
            ),
        ),
        ('{"vehicles": []}', (1, "format", 'must be "gated-rules"')),
        (
            '{"format": "gated-rules", "format_version": 1} trailing',
            (
                1,
                "",
                "invalid JSON: extra data after the document (column 47); stopped reading here",
            ),
        ),
        (
            '{"format": "gated-rules", "format_version": 1, "tags": {}}',
            (1, "", "invalid JSON: expected an array [ (column 56); stopped reading here"),
        ),
    ],
)
def test_json_structure_errors(
    store: RuleStore, tmp_path: Path, text: str, expected: tuple[object, ...]
) -> None:
    path = write(tmp_path, "rules.json", text)
    assert ("", *expected) in problems_of(store, path)


def test_hostile_json_is_refused_cleanly(store: RuleStore, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text(
        '{"format": "gated-rules", "format_version": 1, "vehicles": ['
        + "[" * 100_000
        + "]" * 100_000
        + "]}"
    )
    assert problems_of(store, deep)[0][3] in (
        "invalid JSON: nested too deeply",
        "expected an object {…}",
    )
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(
        b'{"format": "gated-rules",\n"residents": [{"id": "r1", "name": "Ren\xe9"}]}'
    )
    assert problems_of(store, latin1) == [
        ("", 2, "", "not UTF-8 (byte 40 of the line); save the file as UTF-8")
    ]
    huge = tmp_path / "huge.json"
    huge.write_text(
        '{"format": "gated-rules", "format_version": 1, "residents": [{"id": "r1", "name": "'
        + "x" * 1_000_000
        + '"}]}'
    )
    assert problems_of(store, huge) == [("", 1, "residents[0].name", "longer than 200 characters")]
    with pytest.raises(RulesError, match="format"):
        import_rules(store, write(tmp_path, "rules.txt", "{}"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
    st.sampled_from(["json", "csv"]),
)
def test_any_bytes_either_import_or_fail_with_a_rules_error(data: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"vehicles.{fmt}"
        path.write_bytes(data)
        with RuleStore(Path(tmp) / "r.sqlite3") as s:
            try:
                import_rules(s, path)
            except RulesError:
                assert s.version == 0
            else:
                assert s.version == 1


# --- the small grammars ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("mon-fri,sat", {0, 1, 2, 3, 4, 5}),
        ("Sat, SUNDAY", {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),
        ("daily", set(range(7))),
        ("wed", {2}),
    ],
)
def test_parse_days(text: str, days: set[int]) -> None:
    assert parse_days(text) == days


@given(st.frozensets(st.integers(0, 6), min_size=1))
def test_fmt_days_round_trips(days: frozenset[int]) -> None:
    assert parse_days(fmt_days(days)) == days


def test_fmt_days_is_compact() -> None:
    assert fmt_days(frozenset({0, 1, 2, 3, 4, 5})) == "mon-sat"
    assert fmt_days(frozenset({5, 6})) == "sat,sun"
    assert fmt_days(frozenset({0, 2, 3, 4, 6})) == "mon,wed-fri,sun"


def test_timestamps_take_the_site_zone_unless_given_an_offset() -> None:
    assert parse_timestamp("2025-01-01T00:00", AMS) == 1735686000.0
    assert parse_timestamp("2025-01-01T00:00:00Z", AMS) == 1735689600.0
    assert parse_timestamp("2025-01-01", zoneinfo.ZoneInfo("UTC")) == 1735689600.0
    assert parse_timestamp(12.5, AMS) == 12.5
    with pytest.raises(ValueError, match="clock change"):
        parse_timestamp("2025-03-30T02:30", AMS)
