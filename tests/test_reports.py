"""Reports: text, JSON (validated against its schema), Chrome trace (checked against the
trace-event format), and the HTML page (opened in a real headless browser)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from esper_lifetimes import Engine, InvalidArgumentError, ops
from esper_lifetimes.reports import (
    KINDS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Timeline,
    analyze,
    chrome_trace,
    html_report,
    load_schema,
    report_dict,
    write_all,
    write_chrome_trace,
    write_html,
    write_json,
    write_text,
)

D, S, T = 0, 0x5A00, 0x5B00  # default stream, side stream, third stream
X, Y = 0x7F0000000000, 0x7F0000100000
N = 4096


# --------------------------------------------------------------------------------------
# Timelines
# --------------------------------------------------------------------------------------


def worked_example(fix: str | None = None) -> tuple[Timeline, Engine, dict[str, int]]:
    """SEMANTICS.md's worked example, called through a recording timeline.

    Returns the timeline, the engine, and the sequence numbers of its landmark events.
    ``fix`` = "record_stream" / "wait" / "sync" makes it clean.
    """
    tl = Timeline()
    e = tl.wrap(Engine())
    at: dict[str, int] = {}
    e.define_stream(D, "default")
    e.define_stream(S, "side")
    e.alloc(X, N, D, "example.py:1")  # x = torch.randn(N, device="cuda")
    e.access(X, N, D, True, "example.py:1")
    e.stream_wait(S, D)  # s.wait_stream(D)
    e.alloc(Y, N, S, "example.py:4")  # with torch.cuda.stream(s): y = x * 2
    at["use"] = len(tl)
    e.access(X, N, S, False, "example.py:4")
    e.access(Y, N, S, True, "example.py:4")
    if fix == "record_stream":
        e.record_stream(X, S, "example.py:5")
    elif fix == "wait":
        e.stream_wait(D, S)
    elif fix == "sync":
        e.stream_synchronize(S)
    at["free"] = len(tl)
    e.free(X, "example.py:6")  # del x
    at["realloc"] = len(tl)
    e.alloc(X, N, D, "example.py:7")  # z = torch.zeros(N, device="cuda")
    e.access(X, N, D, True, "example.py:7")
    return tl, e, at


def all_kinds_timeline() -> tuple[Timeline, Engine]:
    """Every hazard kind at least once, plus a repeated one."""
    tl, e, _ = worked_example()
    e.define_stream(T, "third")
    # unsynced-access: a write on D, then a read on T with no ordering
    b = 0x7F0000200000
    e.alloc(b, N, D, "access.py:1")
    e.access(b, N, D, True, "access.py:2")
    e.access(b, N, T, False, "access.py:3")
    # host-read-before-copy and host-write-during-copy
    h1, h2 = 0x10000000, 0x20000000
    e.copy_to_host(h1, 256, S, "host.py:1")
    e.host_access(h1, 256, False, "host.py:2")
    e.copy_from_host(h2, 256, S, "host.py:3")
    e.host_access(h2, 256, True, "host.py:4")
    # redundant-record-stream on the allocation stream
    e.record_stream(b, D, "advice.py:1")
    # the worked example's unsynced-free again, same sites: a repeat
    c = 0x7F0000300000
    e.alloc(c, N, D, "example.py:1")
    e.stream_wait(S, D)
    e.access(c, N, S, False, "example.py:4")
    e.free(c, "example.py:6")
    e.alloc(c + N, N, D, "example.py:7")  # the next allocation on D judges the free
    # unwaited-allocation: fresh storage of D read on T before T waited for D
    u = 0x7F0000400000
    e.alloc(u, N, D, "fresh.py:1")
    e.access(u, N, T, False, "fresh.py:2")
    e.device_synchronize()
    e.event_record(0xE1, S)
    e.event_wait(0xE1, T)
    e.event_synchronize(0xE1)
    e.stream_query(T, False)
    e.flush()  # the end of the run: record_stream advice is given here
    return tl, e


# --------------------------------------------------------------------------------------
# The timeline and where hazards open
# --------------------------------------------------------------------------------------


def test_timeline_records_calls_in_order():
    tl, e, at = worked_example()
    events = list(tl)
    assert [ev.seq for ev in events] == list(range(len(tl)))
    assert events[at["free"]].op == "free"
    assert events[at["free"]].args == {"ptr": X, "site": "example.py:6"}
    assert events[at["use"]].args == {
        "ptr": X,
        "nbytes": N,
        "stream": S,
        "write": False,
        "site": "example.py:4",
    }
    stamps = [ev.t_ns for ev in events]
    assert all(isinstance(t, int) for t in stamps)
    assert stamps == sorted(stamps)
    assert tl[-1].op == "access"


def test_launch_through_a_wrapped_engine_is_recorded_and_replayed():
    tl = Timeline()
    e = tl.wrap(Engine())
    e.define_stream(S, "side")
    e.alloc(X, N, D, "k.py:1")
    e.launch(D, [], [X, N], "k.py:2")
    e.launch(S, (X, N), (), "k.py:3")
    assert [ev.op for ev in tl] == ["define_stream", "alloc", "launch", "launch"]
    assert tl[3].args == {"stream": S, "reads": [X, N], "writes": [], "site": "k.py:3"}
    a = analyze(tl)
    assert [h.fields for h in a.hazards] == [h.to_dict() for h in e.hazards()]
    (h,) = a.hazards
    assert h.fields["kind"] == "unsynced-access" and h.opened_seq == 3
    assert [(x["role"], x["seq"]) for x in h.anchors] == [("access", 2), ("access", 3)]


def test_numpy_integers_through_a_wrapped_engine_make_plain_reports(tmp_path):
    tl = Timeline()
    e = tl.wrap(Engine())
    e.alloc(np.int64(X), np.int64(N), np.uint64(D), "n.py:1")
    e.access(np.uint64(X), np.int32(N), np.int64(S), np.bool_(False), "n.py:2")
    e.free(np.int64(X), "n.py:3")
    e.flush()
    assert tl[1].args == {"ptr": X, "nbytes": N, "stream": S, "write": False, "site": "n.py:2"}
    assert [type(v) for v in tl[1].args.values()] == [int, int, int, bool, str]
    paths = write_all(tmp_path / "r", e.hazards(), tl)
    doc = json.loads(open(paths["json"]).read())
    assert [h["kind"] for h in doc["hazards"]] == ["unsynced-free"]
    with pytest.raises(InvalidArgumentError):
        e.alloc(True, N, D)
    assert len(tl) == 4


def test_timeline_from_event_dicts_checks_them_as_trace_lines():
    from esper_lifetimes.trace import TraceError

    tl = Timeline.from_events(
        [
            {"op": "alloc", "ptr": X, "nbytes": N, "stream": D, "site": "k.py:1"},
            {"op": "launch", "stream": S, "reads": [X, N], "writes": [], "t_ns": 5},
        ]
    )
    assert tl[1].args == {"stream": S, "reads": [X, N], "writes": [], "site": None}
    assert tl[1].t_ns == 5
    with pytest.raises(TraceError, match=r"^event 2: unknown op 'kernel'"):
        Timeline.from_events([{"op": "flush"}, {"op": "kernel"}])
    with pytest.raises(TraceError, match=r"^event 1: free: argument 'ptr' must be an integer"):
        Timeline.from_events([{"op": "free", "ptr": True}])


def test_timeline_does_not_record_rejected_calls():
    tl = Timeline()
    e = tl.wrap(Engine())
    with pytest.raises(Exception, match="0x1234"):
        e.free(0x1234)
    assert len(tl) == 0


def test_record_validates_op_and_arguments():
    tl = Timeline()
    tl.record("alloc", ptr=1, nbytes=2, stream=0)
    tl.record("free", 1)
    assert tl[0].args == {"ptr": 1, "nbytes": 2, "stream": 0, "site": None}
    with pytest.raises(ValueError, match="unknown engine op"):
        tl.record("malloc", 1)
    with pytest.raises(TypeError, match="missing required argument 'nbytes'"):
        tl.record("alloc", ptr=1)
    with pytest.raises(TypeError, match="unexpected"):
        tl.record("free", 1, bogus=2)


def test_interned_sites_are_recorded_as_strings():
    tl = Timeline()
    e = tl.wrap(Engine())
    site = e.intern("a.py:3")
    e.alloc(X, N, D, site)
    e.stream_wait(S, D)
    e.access(X, N, S, False, site)
    e.free(X, site)
    assert tl.to_events()[0] == {
        "op": "alloc",
        "ptr": X,
        "nbytes": N,
        "stream": D,
        "site": "a.py:3",
    }
    assert analyze(tl).hazards[0].fields["alloc_site"] == "a.py:3"


def test_hazards_open_at_the_right_event():
    tl, e, at = worked_example()
    a = analyze(tl)
    kinds = {h.fields["kind"]: h for h in a.hazards}
    assert set(kinds) == {"unsynced-free", "reuse-race"}
    free = kinds["unsynced-free"]
    # a free is judged at the next allocation on its allocation stream
    assert free.opened_seq == at["realloc"]
    assert [(x["role"], x["seq"], x["stream"]) for x in free.anchors] == [
        ("use", at["use"], S),
        ("free", at["free"], D),
        ("judged", at["realloc"], D),
    ]
    race = kinds["reuse-race"]
    assert race.opened_seq == at["realloc"]
    assert [x["role"] for x in race.anchors] == ["use", "free", "realloc"]
    # the engine's own verdicts agree with the replay
    assert [h.kind for h in e.hazards()] == [h.fields["kind"] for h in a.hazards]


@pytest.mark.parametrize("fix", ["record_stream", "wait", "sync"])
def test_clean_variants_have_no_hazards(fix):
    tl, e, _ = worked_example(fix)
    assert e.hazard_count() == 0
    assert analyze(tl).hazards == []


def test_repeats_are_placed():
    tl, e = all_kinds_timeline()
    a = analyze(tl, e.hazards())
    free = next(h for h in a.hazards if h.fields["kind"] == "unsynced-free")
    assert free.fields["count"] == 2
    assert len(free.occurrences) == 2
    assert len(free.paths) == 2
    second = free.paths[1]
    assert [x["role"] for x in second] == ["use", "free", "judged"]
    assert tl[second[-1]["seq"]].op == "alloc"  # the allocation that judged the free


def test_every_kind_is_anchored():
    tl, e = all_kinds_timeline()
    a = analyze(tl, e.hazards())
    roles = {h.fields["kind"]: [x["role"] for x in h.anchors] for h in a.hazards}
    assert roles["unsynced-access"] == ["access", "access"]
    assert roles["host-read-before-copy"] == ["copy", "host_read"]
    assert roles["host-write-during-copy"] == ["copy", "host_write"]
    assert roles["redundant-record-stream"] == ["record_stream"]
    assert roles["unwaited-allocation"] == ["alloc", "access"]
    assert roles["unsynced-free"] == ["use", "free", "judged"]
    for h in a.hazards:
        if h.fields["kind"] == "redundant-record-stream":  # advice is given at the flush
            assert tl[h.opened_seq].op == "flush"
        else:
            assert h.opened_seq == h.anchors[-1]["seq"]


def test_timeline_from_trace_events_matches():
    tl, e, at = worked_example()
    again = Timeline.from_events(tl.to_events())
    assert len(again) == len(tl)
    assert all(ev.t_ns is None for ev in again)
    a, b = analyze(tl), analyze(again)
    assert [(h.fields, h.opened_seq) for h in a.hazards] == [
        (h.fields, h.opened_seq) for h in b.hazards
    ]


def test_timeline_from_trace_file(tmp_path):
    trace = pytest.importorskip("esper_lifetimes.trace")
    tl, e, at = worked_example()
    path = tmp_path / "run.jsonl"
    with trace.TraceWriter(path, metadata={"description": "worked example"}) as w:
        for obj in tl.to_events():
            w.write(obj.pop("op"), **obj)
    from_file = Timeline.from_trace(path)
    assert len(from_file) == len(tl)
    assert from_file[0].line == 2  # line 1 is the header
    assert from_file.meta["trace"] == str(path)
    a = analyze(from_file)
    assert [h.opened_seq for h in a.hazards] == [at["realloc"], at["realloc"]]


def test_bulk_replay_is_recorded():
    tl = Timeline()
    e = tl.wrap(Engine())
    rows = np.array(
        [
            [ops.ALLOC, X, N, D],
            [ops.STREAM_WAIT, S, D, 0],
            [ops.READ, X, N, S],
            [ops.FREE, X, 0, 0],
        ],
        dtype=np.int64,
    )
    assert e.replay(rows) == 4
    assert [ev.op for ev in tl] == ["alloc", "stream_wait", "access", "free"]
    a = analyze(tl)
    assert [h.fields["kind"] for h in a.hazards] == ["unsynced-free"]
    assert a.hazards[0].opened_seq == 3


def test_hazards_missing_from_the_timeline_are_still_reported():
    tl, e, at = worked_example()
    short = Timeline(max_events=at["free"])
    for ev in tl:
        short.record(ev.op, **ev.args)
    assert short.truncated and short.dropped == len(tl) - at["free"]
    a = analyze(short, e.hazards())
    assert len(a.hazards) == 2
    assert all(h.opened_seq is None for h in a.hazards)
    doc = report_dict(e.hazards(), short)
    jsonschema.validate(doc, load_schema(), cls=jsonschema.Draft202012Validator)
    assert doc["hazards"][0]["opened_at"] is None
    assert doc["timeline"]["dropped"] == short.dropped


def test_rejected_events_are_skipped_and_listed():
    tl = Timeline.from_events(
        [
            {"op": "free", "ptr": 0x999},  # unknown storage: the engine rejects it
            {"op": "alloc", "ptr": X, "nbytes": N, "stream": D},
        ]
    )
    a = analyze(tl)
    assert [seq for seq, _, _ in a.rejected] == [0]
    assert len(a.storages) == 1


def test_a_tracker_records_its_engine_calls_on_a_timeline():
    import torch
    from esper_lifetimes import track, virtual

    tl = Timeline(max_events=10_000)
    side = virtual.Stream(name="side")
    with track("collect", cpu="device", timeline=tl) as t:
        x = torch.ones(256)  # @alloc
        side.wait_stream(virtual.current_stream())
        with virtual.stream(side):
            y = x * 2  # @use
        del x  # @free
    del y
    assert t.timeline is tl and len(tl) > 0 and tl.dropped == 0
    assert all(ev.t_ns is not None for ev in tl)  # recorded live: wall-clock timestamps
    ops_seen = {ev.op for ev in tl}
    assert {"define_stream", "alloc", "access", "stream_wait", "free"} <= ops_seen
    (h,) = t.hazards
    # the replay finds the tracker's hazard where the free was judged: at the flush of
    # the region's end, as no allocation on the default stream followed it
    a = analyze(tl, t.hazards)
    assert a.hazards[0].opened_seq is not None
    assert tl[a.hazards[0].opened_seq].op == "flush"
    assert [x["role"] for x in a.hazards[0].anchors] == ["use", "free"]
    assert a.hazards[0].fields["use_site"] == h.use_site and h.use_site.endswith(
        f"test_reports.py:{_line_of('# @use')}"
    )
    assert [s.name for s in a.streams.values()][:2] == ["default", "side"]


def _line_of(tag: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        (n,) = [i for i, line in enumerate(f, 1) if line.rstrip().endswith(tag)]
    return n


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def test_text_report_groups_by_kind_with_counts_streams_and_sites():
    tl, e = all_kinds_timeline()
    out = io.StringIO()
    write_text(e.hazards(), out, sources={"example.py": "x = randn()\n\n\ny = x * 2\n"})
    text = out.getvalue()
    headers = re.findall(r"^(\S+) \((error|advice)\):", text, re.M)
    assert [k for k, _ in headers] == [
        "unsynced-free",
        "reuse-race",
        "unwaited-allocation",
        "unsynced-access",
        "host-read-before-copy",
        "host-write-during-copy",
        "redundant-record-stream",
    ]
    assert "unsynced-free (error): 1 distinct hazard, 2 occurrences" in text
    assert re.search(r"#1  x2  storage 0x7f0000000000 \(4 KiB\); streams: default, side", text)
    assert re.search(r"used\s+example.py:4\s+on side\s+\| y = x \* 2", text)
    assert re.search(r"freed\s+example.py:6", text)
    assert "fix: " in text
    assert text.startswith(
        "esper-lifetimes: 7 distinct hazards (8 occurrences): 6 errors, 1 advice"
    )


def test_compact_report_shows_roles_source_lines_and_the_fix():
    from esper_lifetimes.reports import format_report

    tl, e = all_kinds_timeline()
    text = format_report(e.hazards(), sources={"example.py": "x = randn()\n\n\ny = x * 2\n"})
    assert text.startswith("esper-lifetimes: 6 errors, 1 advice\n\nERROR unsynced-free (x2)")
    block = text.split("\n\n")[1].splitlines()
    assert block[2] == "  allocated on default:        example.py:1    x = randn()"
    assert block[3] == "  used on side:                example.py:4    y = x * 2"
    assert block[4].startswith("  freed:                       example.py:6")
    assert block[-1] == "  fix: " + KINDS["unsynced-free"].hint
    # every hazard has its fix line, advice last
    assert text.count("\n  fix: ") == len(e.hazards())
    assert text.rsplit("\n\n", 1)[1].startswith("ADVICE redundant-record-stream")


def test_compact_report_takes_a_hazards_own_fix_and_says_what_was_not_seen():
    from esper_lifetimes.reports import format_report

    own = {
        "kind": "unsynced-free",
        "use_site": "val.py:42",
        "use_stream_name": "env1",
        "fix": "call override.record_stream(env1) before val.py:43 frees it",
    }
    text = format_report([own], read_sources=False)
    assert "  fix: call override.record_stream(env1) before val.py:43 frees it" in text
    assert "  allocated:                   (not seen: allocated before tracking began)" in text
    assert "  used on env1:                val.py:42" in text
    assert "freed" not in text and "judged" not in text  # no site: no line
    # or a function the tracker gives, which knows the tensor and the stream
    tl, e = all_kinds_timeline()
    named = {"unsynced-free": "call x.record_stream(side) before `del x` (example.py:6)"}
    text = format_report(e.hazards(), fix_for=lambda h: named.get(h.kind))
    assert "\n  fix: call x.record_stream(side) before `del x` (example.py:6)\n" in text
    assert "  fix: " + KINDS["reuse-race"].hint in text
    out = io.StringIO()
    write_text(e.hazards(), out, fix_for=lambda h: named.get(h.kind))
    assert "      fix: call x.record_stream(side) before `del x` (example.py:6)" in out.getvalue()


def test_tracker_report_and_its_error_are_the_compact_form():
    import torch
    from esper_lifetimes import LifetimeHazardError, track, virtual
    from esper_lifetimes.reports import format_report

    side = virtual.Stream(name="side")
    with pytest.raises(LifetimeHazardError) as info:
        with track("raise", cpu="device") as t:
            x = torch.ones(64)
            side.wait_stream(virtual.current_stream())
            with virtual.stream(side):
                _ = x * 2
            del x
    from esper_lifetimes.fixes import fix_for  # the tracker names the tensor and stream

    assert str(info.value) == format_report(info.value.hazards, fix_for=fix_for)
    assert t.report() == format_report(t.hazards, fix_for=fix_for)
    assert "\n  fix: call `x.record_stream(side)`" in str(info.value)


def test_text_report_defaults_to_stderr(capsys):
    write_text([])
    assert "no hazards found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------


def validate(doc):
    jsonschema.validate(doc, load_schema(), cls=jsonschema.Draft202012Validator)


def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == SCHEMA_NAME
    assert schema["properties"]["version"]["const"] == SCHEMA_VERSION


def test_json_report_of_every_kind_validates_with_its_anchors():
    tl, e = all_kinds_timeline()
    doc = report_dict(e.hazards(), tl)
    validate(doc)
    kinds = {h["kind"]: h for h in doc["hazards"]}
    assert set(kinds) == set(KINDS)
    assert [a["role"] for a in kinds["unwaited-allocation"]["anchors"]] == ["alloc", "access"]
    assert [a["role"] for a in kinds["unsynced-free"]["anchors"]] == ["use", "free", "judged"]


def test_json_report_validates(tmp_path):
    tl, e, at = worked_example()
    path = tmp_path / "report.json"
    doc = write_json(path, e.hazards(), tl, meta={"command": "pytest"})
    assert json.loads(path.read_text()) == doc
    validate(doc)
    assert doc["schema"] == SCHEMA_NAME and doc["version"] == SCHEMA_VERSION
    assert doc["meta"]["command"] == "pytest"
    assert doc["summary"]["errors"] == 2
    first = doc["hazards"][0]
    assert first["kind"] == "unsynced-free"
    assert first["opened_at"] == at["realloc"]
    assert first["streams"] == ["default", "side"]
    assert [a["role"] for a in first["anchors"]] == ["use", "free", "judged"]
    assert doc["timeline"]["streams"][1] == {
        "handle": S,
        "name": "side",
        "virtual": False,
        "storages": 1,
    }


def test_json_report_of_every_kind_and_without_timeline_validates():
    tl, e = all_kinds_timeline()
    validate(report_dict(e.hazards(), tl))
    validate(report_dict(None, tl))  # hazards found by replaying the timeline
    validate(report_dict(e.hazards()))  # no timeline
    validate(report_dict([h.to_dict() for h in e.hazards()]))  # dicts
    clean, _, _ = worked_example("sync")
    doc = report_dict(None, clean)
    validate(doc)
    assert doc["hazards"] == [] and doc["summary"]["distinct"] == 0


def test_schema_rejects_drift():
    tl, e, _ = worked_example()
    doc = report_dict(e.hazards(), tl)
    for mutate in (
        lambda d: d.update(version=2),
        lambda d: d["hazards"][0].update(severity="warning"),
        lambda d: d["hazards"][0].update(undocumented=1),
        lambda d: d["hazards"][0].pop("message"),
    ):
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


# --------------------------------------------------------------------------------------
# Chrome trace-event format
# --------------------------------------------------------------------------------------

_PHASES = set("BEXiIbneCsftPNODMVvRcSTpF(")
_META_NAMES = {
    "process_name": "name",
    "process_labels": "labels",
    "process_sort_index": "sort_index",
    "thread_name": "name",
    "thread_sort_index": "sort_index",
}
# The reserved colour names of the trace viewer (catapult's color_scheme.js).
_CNAMES = {
    "thread_state_uninterruptible",
    "thread_state_iowait",
    "thread_state_running",
    "thread_state_runnable",
    "thread_state_sleeping",
    "thread_state_unknown",
    "background_memory_dump",
    "light_memory_dump",
    "detailed_memory_dump",
    "vsync_highlight_color",
    "generic_work",
    "good",
    "bad",
    "terrible",
    "black",
    "grey",
    "white",
    "yellow",
    "olive",
    "rail_response",
    "rail_animation",
    "rail_idle",
    "rail_load",
    "startup",
    "heap_dump_stack_frame",
    "heap_dump_object_type",
    "heap_dump_child_node_arrow",
    "cq_build_running",
    "cq_build_passed",
    "cq_build_failed",
    "cq_build_abandoned",
    "cq_build_attempt_runnig",
    "cq_build_attempt_passed",
    "cq_build_attempt_failed",
}


def check_trace_event_document(doc) -> None:
    """Checks a JSON Object Format trace against the Trace Event Format specification
    (the keys, phases and types each event needs; flow pairs; complete events properly
    nested on each thread, which Perfetto requires)."""
    assert isinstance(doc, dict), "the JSON Object Format is an object"
    assert isinstance(doc.get("traceEvents"), list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    assert isinstance(doc.get("otherData", {}), dict)
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN/Infinity
    flows: dict[tuple, list] = {}
    slices: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for i, ev in enumerate(doc["traceEvents"]):
        where = f"event {i} {ev!r}"
        assert isinstance(ev, dict), where
        ph = ev.get("ph")
        assert ph in _PHASES, where
        assert isinstance(ev.get("name"), str), where
        assert type(ev.get("pid")) is int and type(ev.get("tid")) is int, where
        if "cat" in ev:
            assert isinstance(ev["cat"], str), where
        if "args" in ev:
            assert isinstance(ev["args"], dict), where
        if "cname" in ev:
            assert ev["cname"] in _CNAMES, where
        if ph == "M":
            assert ev["name"] in _META_NAMES, where
            key = _META_NAMES[ev["name"]]
            assert key in ev["args"], where
            if key == "sort_index":
                assert type(ev["args"][key]) is int, where
            else:
                assert isinstance(ev["args"][key], str), where
            continue
        ts = ev.get("ts")
        assert isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts >= 0, where
        if ph == "X":
            dur = ev.get("dur")
            assert isinstance(dur, (int, float)) and dur >= 0, where
            slices.setdefault((ev["pid"], ev["tid"]), []).append((ts, ts + dur))
        elif ph in ("i", "I"):
            assert ev.get("s", "t") in ("g", "p", "t"), where
        elif ph in ("s", "t", "f"):
            assert isinstance(ev.get("id"), (int, str)), where
            assert isinstance(ev.get("cat"), str), where
            if "bp" in ev:
                assert ev["bp"] == "e", where
            flows.setdefault((ev["cat"], ev["id"]), []).append((ph, ts))
    for key, steps in flows.items():
        phases = [p for p, _ in steps]
        assert phases[0] == "s" and phases[-1] == "f" and phases.count("s") == 1, key
        times = [t for _, t in steps]
        assert times == sorted(times), key
    for thread, spans in slices.items():
        stack: list[float] = []
        for start, end in sorted(spans, key=lambda se: (se[0], -se[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"overlapping complete events on {thread}"
            stack.append(end)


def thread_names(doc) -> dict[int, str]:
    return {
        e["tid"]: e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def test_chrome_trace_is_a_valid_trace_event_document(tmp_path):
    tl, e, at = worked_example()
    path = tmp_path / "trace.json"
    doc = write_chrome_trace(path, tl, e.hazards(), clock="sequence")
    assert json.loads(path.read_text()) == doc
    check_trace_event_document(doc)
    names = thread_names(doc)
    # one track per stream (its uses), plus the host
    tracks = {name: tid for tid, name in names.items() if "storages" not in name}
    assert set(tracks) == {"default", "side", "host"}
    uses = [ev for ev in doc["traceEvents"] if ev.get("cat") == "use"]
    assert {names[ev["tid"]] for ev in uses} == {"default", "side"}
    side_use = next(ev for ev in uses if ev["ts"] == at["use"])
    assert side_use["tid"] == tracks["side"] and side_use["name"] == "read"
    # storage lifetimes from allocation to free, on the allocation stream's storage threads
    lifetimes = [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]
    x = next(ev for ev in lifetimes if ev["args"]["ptr"] == hex(X) and ev["args"]["freed"])
    assert (x["ts"], x["ts"] + x["dur"]) == (2, at["free"])
    assert names[x["tid"]] == "default storages"
    # each hazard marked where and when it opened
    marks = {
        ev["args"]["kind"]: ev
        for ev in doc["traceEvents"]
        if ev.get("cat", "").startswith("hazard,")
    }
    assert marks["unsynced-free"]["ts"] == at["realloc"]
    assert marks["unsynced-free"]["tid"] == tracks["default"]
    assert marks["reuse-race"]["ts"] == at["realloc"]
    assert "example.py:4" in marks["unsynced-free"]["args"]["message"]
    assert marks["unsynced-free"]["args"]["sites"]["used"] == "example.py:4"
    # a flow arrow from the uncovered use to the free
    flow = [ev for ev in doc["traceEvents"] if ev.get("cat") == "hazard"]
    assert ("s", at["use"], tracks["side"]) in {(f["ph"], f["ts"], f["tid"]) for f in flow}
    # the wait is a flow arrow from default to side
    waits = [ev for ev in doc["traceEvents"] if ev.get("cat") == "wait_stream"]
    assert {(w["ph"], names[w["tid"]]) for w in waits} == {("s", "default"), ("f", "side")}


def test_chrome_trace_every_kind_and_wall_clock():
    tl, e = all_kinds_timeline()
    doc = chrome_trace(tl, e.hazards())
    check_trace_event_document(doc)
    assert doc["otherData"]["clock"] == "wall"
    kinds = {
        ev["args"]["kind"]
        for ev in doc["traceEvents"]
        if ev.get("cat", "").startswith("hazard,") and "kind" in ev["args"]
    }
    assert kinds == set(KINDS)
    repeats = [ev for ev in doc["traceEvents"] if ev["name"].endswith("(repeat)")]
    assert len(repeats) == 1
    seq_doc = chrome_trace(tl, clock="sequence")
    check_trace_event_document(seq_doc)
    with pytest.raises(ValueError):
        chrome_trace(Timeline.from_events(tl.to_events()), clock="wall")


def test_checker_catches_malformed_traces():
    good = {"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": 5, "pid": 1, "tid": 1}]}
    check_trace_event_document(good)
    bad_docs = [
        [{"name": "a", "ph": "X", "ts": 0, "pid": 1, "tid": 1}],  # no dur
        [{"name": "a", "ph": "Q", "ts": 0, "pid": 1, "tid": 1}],  # unknown phase
        [{"name": "a", "ph": "i", "ts": "0", "pid": 1, "tid": 1}],  # ts not a number
        [{"name": "a", "ph": "i", "ts": 0, "pid": "1", "tid": 1}],  # pid not an int
        [
            {"name": "a", "ph": "X", "ts": 0, "dur": 5, "pid": 1, "tid": 1},
            {"name": "b", "ph": "X", "ts": 3, "dur": 5, "pid": 1, "tid": 1},  # overlap
        ],
        [{"name": "f", "cat": "c", "ph": "f", "id": 1, "ts": 0, "pid": 1, "tid": 1}],
    ]
    for events in bad_docs:
        with pytest.raises(AssertionError):
            check_trace_event_document({"traceEvents": events})


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------

_EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:url\(\s*["']?\s*(?:https?:)?//)|(?:@import)|(?:<link\b)|(?:<iframe\b)""",
    re.I,
)


def test_html_is_self_contained(tmp_path):
    tl, e, at = worked_example()
    path = tmp_path / "report.html"
    write_html(path, tl, e.hazards(), sources={"example.py": "x = randn()\n\n\ny = x * 2\n"})
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not _EXTERNAL.search(page)
    assert not re.search(r"https?://", page), "no URL at all, not even the SVG namespace"
    assert "<script src" not in page
    # the hazard list is static HTML: readable without JavaScript
    assert page.count('class="hz"') == 2
    assert 'data-kind="unsynced-free"' in page and 'data-kind="reuse-race"' in page
    assert "example.py:4" in page and "y = x * 2" in page
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    blob = json.loads(data.group(1))
    assert [lane["name"] for lane in blob["lanes"]] == ["default", "side", "host"]
    assert len(blob["hazards"]) == 2


def test_html_escapes_hostile_sites(tmp_path):
    tl = Timeline()
    e = tl.wrap(Engine())
    evil = "</script><script>alert(1)</script>.py:1"
    e.define_stream(S, "<b>side</b>")
    e.alloc(X, N, D, evil)
    e.stream_wait(S, D)
    e.access(X, N, S, False, evil)
    e.free(X, evil)
    page = html_report(tl)
    assert "<script>alert(1)</script>" not in page
    assert "<b>side</b>" not in page
    assert page.count("<script") == 2


def test_write_all(tmp_path):
    tl, e, _ = worked_example()
    paths = write_all(tmp_path / "report", e.hazards(), tl, meta={"program": "example.py"})
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        "report.html",
        "report.json",
        "report.txt",
        "trace.json",
    ]
    validate(json.loads(Path(paths["json"]).read_text()))
    check_trace_event_document(json.loads(Path(paths["chrome_trace"]).read_text()))
    assert "unsynced-free (error)" in Path(paths["text"]).read_text()
    only = write_all(tmp_path / "no-timeline", e.hazards(), None)
    assert set(only) == {"text", "json"}


# --------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


BROWSER = find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None and not os.environ.get("CI"),
    reason="no headless chromium (make setup installs it; in CI this test must run)",
)


def run_browser(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert BROWSER is not None, "CI is set but no chromium is installed: run make setup"
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={cwd / 'profile'}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and interlace == 0 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
        prev = line
    return width, height, rows


def count_near(rows: list[bytes], rgb: tuple[int, int, int], tol: int = 24) -> int:
    n = 0
    for row in rows:
        for x in range(0, len(row), 3):
            if (
                abs(row[x] - rgb[0]) <= tol
                and abs(row[x + 1] - rgb[1]) <= tol
                and abs(row[x + 2] - rgb[2]) <= tol
            ):
                n += 1
    return n


def hex_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@needs_browser
def test_html_report_renders_in_a_headless_browser(tmp_path):
    tl, e = all_kinds_timeline()
    path = tmp_path / "report.html"
    write_html(path, tl, e.hazards())
    url = path.resolve().as_uri()

    # The DOM after the page's script ran: the lanes, storage bars and hazards are drawn.
    dom = run_browser("--dump-dom", url, cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_out = dom.stdout
    assert 'data-rendered="1"' in html_out, "the timeline script did not finish"
    lanes = re.findall(r'<g class="lane(?: host)?" data-lane="\d+" data-name="([^"]*)"', html_out)
    assert lanes == ["default", "side", "third", "host"]
    assert len(re.findall(r'<g class="storage[^"]*" data-storage="\d+"', html_out)) == 7
    drawn = set(
        re.findall(
            r'<g class="hazard-link [a-z]+" data-hazard="\d+" data-kind="([a-z-]+)"', html_out
        )
    )
    assert drawn == set(KINDS)
    assert len(re.findall(r'class="wire"', html_out)) >= 6

    # A screenshot: a real picture, with the hazard colours in it.
    shot = run_browser("--screenshot=shot.png", "--window-size=1400,900", url, cwd=tmp_path)
    png = tmp_path / "shot.png"
    assert png.exists(), shot.stderr[-2000:]
    width, height, rows = read_png(png)
    assert (width, height) == (1400, 900)
    colours = {row[x : x + 3] for row in rows[::3] for x in range(0, len(row), 9)}
    assert len(colours) > 100, "the page looks blank"
    for kind in ("unsynced-free", "reuse-race", "unsynced-access"):
        assert count_near(rows, hex_rgb(KINDS[kind].color)) > 30, f"no {kind} colour drawn"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
