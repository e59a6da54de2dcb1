"""The command line: `esper-lifetimes replay TRACE [--json]` and `esper-lifetimes demo`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("esper_lifetimes")
from esper_lifetimes import cli  # noqa: E402
from esper_lifetimes.trace import TraceWriter  # noqa: E402

D, S = 0, 7
X, Y = 0x7F0000000000, 0x7F0000100000
N = 4096


def unsynced_free(w: TraceWriter, ptr: int, line: int) -> None:
    """P1 of the public scenarios: read on S, freed on D without any ordering."""
    w.alloc(ptr, N, D, f"train.py:{line}")
    w.access(ptr, N, D, True, f"train.py:{line}")
    w.stream_wait(S, D)
    w.access(ptr, N, S, False, f"train.py:{line + 1}")
    w.free(ptr, f"train.py:{line + 2}")


@pytest.fixture
def traces(tmp_path):
    paths = {}
    with TraceWriter(tmp_path / "clean.jsonl") as w:
        w.define_stream(S, "side")
        w.alloc(X, N, D, "a.py:1")
        w.access(X, N, D, True, "a.py:2")
        w.free(X, "a.py:3")
    paths["clean"] = w.name
    with TraceWriter(tmp_path / "advice.jsonl") as w:
        w.alloc(X, N, D, "a.py:1")
        w.record_stream(X, D, "a.py:2")
        w.free(X, "a.py:3")
    paths["advice"] = w.name
    with TraceWriter(tmp_path / "errors.jsonl") as w:
        w.define_stream(S, "side")
        unsynced_free(w, X, 10)
        w.record_stream(X, D, "train.py:30")  # line 8: X is freed, the engine refuses it
    paths["bad_event"] = w.name
    with TraceWriter(tmp_path / "errors_ok.jsonl") as w:
        w.define_stream(S, "side")
        for i in range(3):  # the same sites three times: one distinct hazard, count 3
            unsynced_free(w, X + 2 * N * i, 10)
        unsynced_free(w, Y, 20)
        w.alloc(X, N, D, "train.py:40")  # takes the freed block: reuse-race
        w.record_stream(X, D, "train.py:41")  # advice
    paths["errors"] = w.name
    return paths


def run(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_clean_trace_exits_0(traces, capsys):
    status, out, err = run(["replay", traces["clean"]], capsys)
    assert status == 0
    assert "Replayed 4 events on 2 streams" in out
    assert "No hazards found." in out
    assert err == ""


def test_advice_only_exits_0_and_is_reported(traces, capsys):
    status, out, _ = run(["replay", traces["advice"]], capsys)
    assert status == 0
    assert "0 errors, 1 advice" in out
    assert "redundant-record-stream (advice): 1 distinct hazard, 1 occurrence" in out


def test_errors_exit_1_grouped_by_kind_with_counts(traces, capsys):
    status, out, _ = run(["replay", traces["errors"]], capsys)
    assert status == 1
    assert "unsynced-free (error): 2 distinct hazards, 4 occurrences" in out
    assert "reuse-race (error): 1 distinct hazard, 1 occurrence" in out
    assert "redundant-record-stream (advice): 1 distinct hazard, 1 occurrence" in out
    # errors before advice; each hazard's message with its sites
    assert out.index("unsynced-free (error)") < out.index("reuse-race (error)")
    assert out.index("reuse-race (error)") < out.index("redundant-record-stream (advice)")
    assert "train.py:11" in out and "train.py:21" in out and "side" in out


def test_json_report(traces, capsys):
    status, out, _ = run(["replay", "--json", traces["errors"]], capsys)
    assert status == 1
    report = json.loads(out)
    assert report["trace"] == traces["errors"]
    assert report["errors"] == 3 and report["advice"] == 1
    assert report["kinds"] == {
        "unsynced-free": {"severity": "error", "distinct": 2, "occurrences": 4},
        "reuse-race": {"severity": "error", "distinct": 1, "occurrences": 1},
        "redundant-record-stream": {"severity": "advice", "distinct": 1, "occurrences": 1},
    }
    assert len(report["hazards"]) == 4
    assert {h["kind"] for h in report["hazards"]} == set(report["kinds"])
    assert all(h["message"] for h in report["hazards"])


def test_json_report_of_a_clean_trace_exits_0(traces, capsys):
    status, out, _ = run(["replay", traces["clean"], "--json"], capsys)
    assert status == 0
    assert json.loads(out)["hazards"] == []


def test_missing_file_exits_2(tmp_path, capsys):
    status, out, err = run(["replay", str(tmp_path / "nope.jsonl")], capsys)
    assert status == 2
    assert out == ""
    assert err.startswith("esper-lifetimes: error: ") and "nope.jsonl" in err


def test_malformed_line_exits_2_naming_the_line(traces, capsys):
    path = traces["clean"]
    with open(path, "a") as f:
        f.write('{"op": "free", "ptr": \n')
    status, out, err = run(["replay", path], capsys)
    assert status == 2
    assert f"{path}:6: malformed JSON: Expecting value (column 23)" in err


def test_event_the_engine_rejects_exits_2_naming_the_line(traces, capsys):
    status, _, err = run(["replay", traces["bad_event"]], capsys)
    assert status == 2
    assert f"{traces['bad_event']}:8: record_stream: UnknownStorageError" in err


def test_foreign_file_exits_2(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"traceEvents": []}\n')
    status, _, err = run(["replay", str(path)], capsys)
    assert status == 2
    assert f"{path}:1: not an esper-lifetimes trace" in err


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["replay"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert "usage: esper-lifetimes" in capsys.readouterr().err


def test_demo_reports_the_validation_hazard_and_exits_0(capsys):
    status, out, err = run(["demo"], capsys)
    assert status == 0, err
    assert "Found 3 distinct hazards: 2 errors, 1 advice." in out
    assert "unsynced-free (error): 1 distinct hazard, 3 occurrences" in out
    assert "reuse-race (error): 1 distinct hazard, 2 occurrences" in out
    assert "redundant-record-stream (advice): 1 distinct hazard, 1 occurrence" in out
    assert "env0" in out and "train.py:47" in out


def test_demo_json(capsys):
    status, out, _ = run(["demo", "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    assert report["errors"] == 2 and report["advice"] == 1
    assert report["kinds"]["unsynced-free"]["occurrences"] == 3


def test_python_dash_m_runs_the_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", "demo"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "reuse-race (error)" in proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["demo", "--help"]])
def test_help(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: esper-lifetimes")
    if argv[0] == "replay":
        assert "exit status:" in proc.stdout and "--json" in proc.stdout
