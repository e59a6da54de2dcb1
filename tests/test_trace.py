"""The trace format (docs/TRACE-FORMAT.md): writing, reading, replaying, recording."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

el = pytest.importorskip("esper_lifetimes")
from esper_lifetimes import trace as tr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
D, S, S2 = 0, 0x55D0C3A1E0F0, 0x55D0C3A1E390
EV = 0x55D0C3A7B410
X, Y = 0x7F4E20000000, 0x7F4E20010000
H = 0x7F2A40000000
N = 4096

# Every op of the format, in an order the engine accepts; the trace holds an
# unsynced-free, a reuse-race, an unwaited allocation, an unsynced-access, both host
# hazards, a live hazard and a redundant record_stream (advice, given at the flush).
SCENARIO: list[tuple[str, tuple]] = [
    ("define_stream", (D, "default", False)),
    ("define_stream", (S, "side", False)),
    ("define_stream", (S2, "virt", True)),
    ("alloc", (X, N, D, "train.py:10")),
    ("access", (X, N, D, True, "train.py:10")),
    ("stream_wait", (S, D)),
    ("access", (X, N, S, False, "train.py:12")),
    ("record_stream", (X, D, "train.py:13")),
    ("stream_query", (S, False)),
    ("free", (X, "train.py:14")),
    ("alloc", (X, N, D, "train.py:15")),
    ("access", (X, N, S2, True, "train.py:16")),
    ("access", (X, N, D, False, "train.py:17")),
    ("launch", (S, [X, N], [], "train.py:18")),
    ("event_record", (EV, S2)),
    ("event_wait", (EV, D)),
    ("event_query", (EV, False)),
    ("copy_to_host", (H, 64, S, "train.py:20")),
    ("host_access", (H, 64, False, "train.py:21")),
    ("copy_from_host", (H + 4096, 64, S, "train.py:22")),
    ("host_access", (H + 4096, 64, True, "train.py:23")),
    ("host_release", (H, 64)),
    ("event_synchronize", (EV,)),
    ("stream_synchronize", (S,)),
    ("forget_event", (EV,)),
    ("alloc", (Y, N, S, None)),
    ("free", (Y, None)),
    ("adopt", (Y + N, N, S, "train.py:30")),
    ("device_synchronize", ()),
    ("flush", ()),
]


def hazards_of(engine) -> list[dict]:
    return [h.to_dict() for h in engine.hazards()]


def direct() -> el.Engine:
    e = el.Engine()
    for op, args in SCENARIO:
        getattr(e, op)(*args)
    return e


def write_scenario(path) -> None:
    with tr.TraceWriter(path, metadata={"test": True}) as w:
        for op, args in SCENARIO:
            getattr(w, op)(*args)


def write_lines(path: Path, *lines) -> Path:
    header = {"format": tr.FORMAT, "version": tr.VERSION}
    text = [json.dumps(header)] + [x if isinstance(x, str) else json.dumps(x) for x in lines]
    path.write_text("\n".join(text) + "\n")
    return path


# ---- the format's table matches the engine ------------------------------------------


# (That the format's ops are the Engine's methods with the same parameters, and the bulk
# codes theirs, is tests/test_vocab.py's: the trace format is generated from the vocabulary.)


def test_scenario_covers_every_op():
    assert {op for op, _ in SCENARIO} == set(tr.OPS)


# ---- round trip -----------------------------------------------------------------------


def test_round_trip_reads_back_every_event_with_its_line(tmp_path):
    path = tmp_path / "t.jsonl"
    write_scenario(path)
    trace = tr.read_trace(path)
    assert trace.version == tr.VERSION == 2
    assert trace.metadata == {"test": True}
    events = list(trace)
    assert [(e.op, e.args) for e in events] == SCENARIO
    assert [e.line for e in events] == list(range(2, len(SCENARIO) + 2))
    assert trace.events_read == len(SCENARIO)
    assert list(trace) == events  # re-iterable


def test_replay_equals_direct_calls(tmp_path):
    path = tmp_path / "t.jsonl"
    write_scenario(path)
    expected = hazards_of(direct())
    kinds = {h["kind"] for h in expected}
    assert kinds >= {
        "unsynced-free",
        "reuse-race",
        "unwaited-allocation",
        "unsynced-access",
        "host-read-before-copy",
        "host-write-during-copy",
        "redundant-record-stream",
    }
    assert any(h["live"] for h in expected)
    assert hazards_of(tr.replay_trace(path)) == expected
    assert hazards_of(tr.replay_trace(str(path))) == expected
    assert hazards_of(tr.replay_trace(tr.read_trace(path))) == expected


def test_replay_into_a_given_engine_returns_it(tmp_path):
    path = tmp_path / "t.jsonl"
    write_scenario(path)
    engine = el.Engine()
    assert tr.replay_trace(path, engine) is engine
    assert engine.stats()["events_processed"] > 0


def test_replay_accepts_event_dicts_and_trace_events(tmp_path):
    path = tmp_path / "t.jsonl"
    write_scenario(path)
    expected = hazards_of(direct())
    dicts = [e.to_json() for e in tr.read_trace(path)]
    assert hazards_of(tr.replay_trace(dicts)) == expected
    assert hazards_of(tr.replay_trace(list(tr.read_trace(path)))) == expected


def test_optional_arguments_at_their_default_are_omitted(tmp_path):
    path = tmp_path / "t.jsonl"
    write_scenario(path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["format"] == "esper-lifetimes-trace" and lines[0]["version"] == 2
    assert {"op": "alloc", "ptr": Y, "nbytes": N, "stream": S} in lines
    assert {"op": "define_stream", "stream": S2, "name": "virt", "virtual": True} in lines
    assert {"op": "device_synchronize"} in lines
    # the reader fills the defaults back in
    event = tr.TraceEvent("access", (X, N, S, False, None), 1)
    assert event.to_json() == {"op": "access", "ptr": X, "nbytes": N, "stream": S}
    assert event.arguments() == {"ptr": X, "nbytes": N, "stream": S, "write": False, "site": None}


def test_gzip_round_trip(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    write_scenario(path)
    with gzip.open(path, "rt") as f:
        assert json.loads(f.readline())["format"] == tr.FORMAT
    assert hazards_of(tr.replay_trace(path)) == hazards_of(direct())


def test_writer_on_an_open_file_leaves_it_open(tmp_path):
    path = tmp_path / "t.jsonl"
    with open(path, "w") as f:
        with tr.TraceWriter(f) as w:
            w.device_synchronize()
            w.write("alloc", X, N, stream=D, site="a.py:1")
        assert not f.closed
        assert w.events_written == 2
    assert [(e.op, e.args) for e in tr.read_trace(path)] == [
        ("device_synchronize", ()),
        ("alloc", (X, N, D, "a.py:1")),
    ]


# ---- RecordingEngine -------------------------------------------------------------------


def test_recording_engine_gives_the_engines_hazards_and_a_trace_that_replays_to_them(tmp_path):
    path = tmp_path / "rec.jsonl"
    with tr.RecordingEngine(path) as rec:
        for op, args in SCENARIO:
            assert getattr(rec, op)(*args) is None
        recorded = hazards_of(rec)
        assert rec.hazard_count() == len(recorded)
        assert rec.error_count() > 0
        assert rec.storage_at(X + 10) == (X, N, D)
    assert recorded == hazards_of(direct())
    assert [(e.op, e.args) for e in tr.read_trace(path)] == SCENARIO
    assert hazards_of(tr.replay_trace(path)) == recorded


def test_recording_engine_writes_interned_sites_as_strings(tmp_path):
    path = tmp_path / "rec.jsonl"
    engine = el.Engine()
    with tr.RecordingEngine(path, engine) as rec:
        site = rec.intern("model.py:7")
        assert isinstance(site, int)
        rec.alloc(X, N, D, site)
        rec.access(X, N, S, False, site)
        rec.free(X, site)
    assert rec.engine is engine
    events = list(tr.read_trace(path))
    assert [e.args[-1] for e in events] == ["model.py:7"] * 3
    assert hazards_of(tr.replay_trace(path, flush=False)) == hazards_of(engine) == []
    engine.flush()  # the free is judged at the end of the run, as replay_trace does
    assert hazards_of(tr.replay_trace(path)) == hazards_of(engine) != []


def test_recording_engine_refuses_a_site_id_it_did_not_intern(tmp_path):
    engine = el.Engine()
    site = engine.intern("elsewhere.py:1")
    with tr.RecordingEngine(tmp_path / "rec.jsonl", engine) as rec:
        with pytest.raises(tr.TraceError, match="not interned through this RecordingEngine"):
            rec.alloc(X, N, D, site)
    assert engine.stats()["live_storages"] == 0


def test_recording_engine_does_not_record_a_call_the_engine_rejected(tmp_path):
    path = tmp_path / "rec.jsonl"
    with tr.RecordingEngine(path) as rec:
        rec.alloc(X, N, D)
        with pytest.raises(el.UnknownStorageError):
            rec.free(Y)
        rec.free(X)
    assert [e.op for e in tr.read_trace(path)] == ["alloc", "free"]


def test_recording_engine_records_bulk_rows_as_named_events(tmp_path):
    ops = el.ops
    rows = np.array(
        [
            [ops.ALLOC, X, N, D],
            [ops.WRITE, X, N, D],
            [ops.STREAM_WAIT, S, D, 0],
            [ops.READ, X, N, S],
            [ops.FREE, X, 0, 0],
            [ops.FLUSH, 0, 0, 0],  # judges the pending free
        ],
        dtype=np.int64,
    )
    path = tmp_path / "rec.jsonl"
    with tr.RecordingEngine(path) as rec:
        assert rec.replay(rows) == len(rows)
    events = [(e.op, e.args) for e in tr.read_trace(path)]
    assert events == [
        ("alloc", (X, N, D, None)),
        ("access", (X, N, D, True, None)),
        ("stream_wait", (S, D)),
        ("access", (X, N, S, False, None)),
        ("free", (X, None)),
        ("flush", ()),
    ]
    bulk = el.Engine()
    bulk.replay(rows)
    assert hazards_of(tr.replay_trace(path)) == hazards_of(bulk)
    assert [h.kind for h in bulk.hazards()] == ["unsynced-free"]


def test_recording_engine_records_the_applied_prefix_of_a_failed_bulk_replay(tmp_path):
    ops = el.ops
    rows = np.array(
        [[ops.ALLOC, X, N, D], [ops.FREE, Y, 0, 0], [ops.FREE, X, 0, 0]], dtype=np.int64
    )
    path = tmp_path / "rec.jsonl"
    with tr.RecordingEngine(path) as rec:
        with pytest.raises(el.UnknownStorageError, match="row 1"):
            rec.replay(rows)
    assert [(e.op, e.args) for e in tr.read_trace(path)] == [("alloc", (X, N, D, None))]


# ---- bad files --------------------------------------------------------------------------


def error_of(path) -> tr.TraceError:
    with pytest.raises(tr.TraceError) as info:
        list(tr.read_trace(path))
    return info.value


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"op": "alloc", "ptr": 1,', r"malformed JSON: .*\(column \d+\)"),
        (
            '{"op": "allocate", "ptr": 1}',
            r"unknown op 'allocate' \(known ops: access, adopt, alloc, ",
        ),
        ('{"ptr": 1}', r"missing 'op'"),
        ("[1, 2]", r"expected a JSON object, got list"),
        ('{"op": "alloc", "ptr": 1, "stream": 0}', r"alloc: missing argument 'nbytes'"),
        (
            '{"op": "alloc", "ptr": "0x10", "nbytes": 8, "stream": 0}',
            r"alloc: argument 'ptr' must be an integer, got str '0x10'",
        ),
        (
            '{"op": "free", "ptr": 1, "sight": "a.py:1"}',
            r"free: unknown argument\(s\) 'sight' \(allowed: ptr, site\)",
        ),
        (
            '{"op": "access", "ptr": 1, "nbytes": 8, "stream": 0, "write": 1}',
            r"access: argument 'write' must be true or false, got int 1",
        ),
        ('{"op": "free", "ptr": 1, "site": 3}', r"free: argument 'site' must be a string or null"),
        ('{"op": "free", "ptr": 18446744073709551616}', r"outside the 64-bit range"),
        ('{"op": "free", "ptr": 1.5}', r"must be an integer, got float"),
    ],
)
def test_bad_event_lines_name_the_file_and_line(tmp_path, line, message):
    good = {"op": "device_synchronize"}
    path = write_lines(tmp_path / "bad.jsonl", good, "", good, line, good)
    err = error_of(path)
    assert isinstance(err, el.LifetimesError)
    assert err.line == 5
    assert str(err).startswith(f"{path}:5: ")
    assert re.search(message, str(err)), str(err)


def test_unsupported_version_is_refused_when_opening(tmp_path):
    path = tmp_path / "v2.jsonl"
    path.write_text(json.dumps({"format": tr.FORMAT, "version": 3}) + "\n")
    with pytest.raises(tr.TraceError, match=r":1: unsupported trace version 3 \(this reader") as e:
        tr.read_trace(path)
    assert e.value.line == 1


@pytest.mark.parametrize(
    ("first", "message"),
    [
        ('{"op": "alloc", "ptr": 1, "nbytes": 8, "stream": 0}', "not an esper-lifetimes trace"),
        ('{"format": "chrome-trace", "version": 1}', "not an esper-lifetimes trace"),
        ("not json", "not an esper-lifetimes trace"),
        ("", "not an esper-lifetimes trace"),
        ('{"format": "esper-lifetimes-trace", "version": "1"}', "invalid trace version '1'"),
        ('{"format": "esper-lifetimes-trace", "version": 0}', "invalid trace version 0"),
        (
            '{"format": "esper-lifetimes-trace", "version": 1, "metadata": []}',
            "'metadata' must be an object",
        ),
    ],
)
def test_bad_headers_are_refused_at_line_1(tmp_path, first, message):
    path = tmp_path / "h.jsonl"
    path.write_text(first + "\n")
    with pytest.raises(tr.TraceError, match=re.escape(message)) as e:
        tr.read_trace(path)
    assert str(e.value).startswith(f"{path}:1: ")


def test_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(tr.TraceError, match="cannot read trace"):
        tr.read_trace(tmp_path / "nope.jsonl")


def test_header_may_carry_unknown_keys(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"format": tr.FORMAT, "version": 1, "host": "gpu7"}) + "\n")
    trace = tr.read_trace(path)
    assert trace.header["host"] == "gpu7" and list(trace) == []


def test_an_event_the_engine_rejects_names_its_line_and_keeps_the_cause(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        {"op": "alloc", "ptr": X, "nbytes": N, "stream": D},
        {"op": "free", "ptr": Y},
    )
    engine = el.Engine()
    with pytest.raises(tr.TraceError, match=rf"^{re.escape(str(path))}:3: free: Unknown") as e:
        tr.replay_trace(path, engine)
    assert isinstance(e.value.__cause__, el.UnknownStorageError)
    assert e.value.line == 3
    assert engine.storage_at(X) == (X, N, D)  # events before it were applied


def test_a_bad_in_memory_event_is_named_by_its_index():
    with pytest.raises(tr.TraceError, match=r"^event 2: unknown op 'nope'"):
        tr.replay_trace([{"op": "device_synchronize"}, {"op": "nope"}])


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    with tr.TraceWriter(tmp_path / "w.jsonl") as w:
        with pytest.raises(tr.TraceError, match="argument 'site' must be a string or null"):
            w.alloc(X, N, D, 3)
        with pytest.raises(tr.TraceError, match="argument 'ptr' must be an integer"):
            w.free("0x10")
        with pytest.raises(tr.TraceError, match="unknown op 'kernel'"):
            w.write("kernel", 1)
        with pytest.raises(tr.TraceError, match="pairs flattened"):
            w.launch(D, [X], [])
        with pytest.raises(tr.TraceError, match="missing required argument 'stream'"):
            w.write("alloc", X, N)
        with pytest.raises(tr.TraceError, match="unexpected argument"):
            w.write("free", X, color="red")
    assert list(tr.read_trace(tmp_path / "w.jsonl")) == []


# ---- the bundled example ----------------------------------------------------------------


def test_bundled_trace_is_what_the_example_script_writes(tmp_path):
    out = tmp_path / "step.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_training_trace.py"), "--output", str(out)],
        check=True,
        capture_output=True,
    )
    bundled = ROOT / "python" / "esper_lifetimes" / "data" / "training_step.jsonl"
    header = json.loads(bundled.read_text().splitlines()[0])
    # The producer names the installed version; everything else must match byte for byte.
    expected = out.read_text().splitlines()
    got = bundled.read_text().splitlines()
    assert json.loads(expected[0])["metadata"] == header["metadata"]
    assert got[1:] == expected[1:]


def test_bundled_trace_finds_the_validation_hazard_and_nothing_else():
    from importlib import resources

    data = resources.files("esper_lifetimes").joinpath("data", "training_step.jsonl")
    with resources.as_file(data) as path:
        engine = tr.replay_trace(path)
    found = {(h.kind, h.count, h.alloc_site, h.use_site, h.free_site) for h in engine.hazards()}
    assert found == {
        # three frees at train.py:47 leave a use on another stream behind; the last is
        # still pending when a device_synchronize orders that use before any reuse
        ("unsynced-free", 2, "train.py:47", "train.py:51", "train.py:47"),
        ("reuse-race", 2, "train.py:47", "train.py:51", "train.py:47"),
        ("redundant-record-stream", 1, "train.py:20", "train.py:21", None),
    }
    names = {h.use_stream_name for h in engine.hazards()}
    assert names == {"env0", "default"}


# ---- robustness: numbers, byte order, damaged files (issue 10, items 8-11) -----------


def test_recording_engine_takes_numpy_integers_and_writes_plain_ints(tmp_path):
    path = tmp_path / "np.jsonl"
    with tr.RecordingEngine(path) as rec:
        rec.alloc(np.int64(X), np.int32(N), np.uint64(D), "n.py:1")
        rec.access(np.uint64(X), N, S, np.bool_(False), "n.py:2")
        rec.launch(S, (np.int64(X), np.int64(16)), [], "n.py:3")
    assert [e.args for e in tr.read_trace(path)] == [
        (X, N, D, "n.py:1"),
        (X, N, S, False, "n.py:2"),
        (S, [X, 16], [], "n.py:3"),
    ]
    assert rec.storage_at(X) == (X, N, D)


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.alloc(True, N, D),
        lambda r: r.alloc(X, True, D),
        lambda r: r.alloc(X, N, False),
        lambda r: r.access(X, N, D, 1),
        lambda r: r.alloc(X, N, D, "bad\udc80.py:1"),
        lambda r: r.define_stream(S, "\ud800side"),
        lambda r: r.alloc(1.5, N, D),
    ],
)
def test_a_refused_call_changes_neither_the_engine_nor_the_trace(tmp_path, call):
    path = tmp_path / "bad.jsonl"
    with tr.RecordingEngine(path) as rec:
        rec.alloc(Y, N, D, "ok.py:1")
        before = rec.stats()
        with pytest.raises(el.InvalidArgumentError):
            call(rec)
        assert rec.stats() == before
        assert rec.storage_at(X) is None
    assert [e.op for e in tr.read_trace(path)] == ["alloc"]


def test_writer_refuses_bools_and_surrogates_with_a_trace_error(tmp_path):
    with tr.TraceWriter(tmp_path / "w.jsonl") as w:
        with pytest.raises(tr.TraceError, match="'ptr' must be an integer, not a bool"):
            w.alloc(True, N, D)
        with pytest.raises(tr.TraceError, match="'site' is not valid text"):
            w.free(X, "a\udc80.py:1")
        w.alloc(np.int64(X), N, D)  # numpy integers are plain ints in the file
    assert (tmp_path / "w.jsonl").read_text().splitlines()[1] == (
        f'{{"op":"alloc","ptr":{X},"nbytes":{N},"stream":{D}}}'
    )


def test_recording_engine_replays_a_big_endian_array_as_its_values(tmp_path):
    rows = np.array(
        [[el.ops.ALLOC, X, 16, D], [el.ops.READ, X, 16, S], [el.ops.FREE, X, 0, 0]],
        dtype=">i8",
    )
    path = tmp_path / "be.jsonl"
    with tr.RecordingEngine(path) as rec:
        assert rec.replay(rows) == 3
        assert rec.stats()["live_storages"] == 0
    assert [e.args for e in tr.read_trace(path)] == [
        (X, 16, D, None),
        (X, 16, S, False, None),
        (X, None),
    ]


def test_deeply_nested_json_is_a_trace_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write_lines(tmp_path / "deep.jsonl", deep)
    with pytest.raises(tr.TraceError, match=r":2: malformed JSON: nested too deeply"):
        list(tr.read_trace(path))
    head = tmp_path / "deephead.jsonl"
    head.write_text("[" * 100_000 + "\n")
    with pytest.raises(tr.TraceError, match=":1: not an esper-lifetimes trace"):
        tr.read_trace(head)


def test_a_cut_last_line_ends_the_trace_and_is_reported(tmp_path):
    path = write_lines(
        tmp_path / "cut.jsonl",
        {"op": "alloc", "ptr": X, "nbytes": N, "stream": D, "site": "c.py:1"},
        {"op": "access", "ptr": X, "nbytes": N, "stream": S, "site": "c.py:2"},
        {"op": "free", "ptr": X, "site": "c.py:3"},
    )
    path.write_bytes(path.read_bytes() + b'{"op":"alloc","ptr":' + str(X).encode())
    trace = tr.read_trace(path)
    assert [e.op for e in trace] == ["alloc", "access", "free"]
    assert trace.cut_at == 5
    engine = tr.replay_trace(trace)
    assert [h.kind for h in engine.hazards()] == ["unsynced-free"]
    # a cut inside a UTF-8 sequence is a cut too
    path.write_bytes(path.read_bytes() + b"\xc3")
    trace = tr.read_trace(path)
    assert len(list(trace)) == 3 and trace.cut_at == 5
    # a malformed line that is not the last one is still an error
    bad = write_lines(tmp_path / "bad.jsonl", '{"op": "free", "ptr": ', {"op": "flush"})
    with pytest.raises(tr.TraceError, match=":2: malformed JSON"):
        list(tr.read_trace(bad))


def test_a_cut_gzip_trace_replays_its_whole_lines(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    with tr.RecordingEngine(path) as rec:
        for i in range(2000):
            rec.alloc(X + i * N, N, D, f"g.py:{i}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    trace = tr.read_trace(path)
    events = list(trace)
    assert 0 < len(events) < 2000 and trace.cut_at == len(events) + 2
    assert [e.args[0] for e in events] == [X + i * N for i in range(len(events))]


def test_version_1_traces_are_still_read(tmp_path):
    path = tmp_path / "v1.jsonl"
    path.write_text(
        json.dumps({"format": tr.FORMAT, "version": 1})
        + "\n"
        + json.dumps({"op": "alloc", "ptr": X, "nbytes": N, "stream": D})
        + "\n"
    )
    trace = tr.read_trace(path)
    assert trace.version == 1 and [e.op for e in trace] == ["alloc"]
    assert tr.VERSION == 2


def test_a_utf8_bom_is_accepted(tmp_path):
    path = write_lines(tmp_path / "bom.jsonl", {"op": "alloc", "ptr": X, "nbytes": N, "stream": D})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [e.op for e in tr.read_trace(path)] == ["alloc"]


def test_a_surrogate_in_a_site_is_a_trace_error_not_a_unicode_error(tmp_path):
    path = write_lines(
        tmp_path / "sur.jsonl",
        '{"op": "alloc", "ptr": 1, "nbytes": 8, "stream": 0, "site": "a\\udc80.py:1"}',
    )
    with pytest.raises(tr.TraceError, match=r":2: alloc: argument 'site' is not valid text"):
        tr.replay_trace(path)
