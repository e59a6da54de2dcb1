"""The command line: `esper-lifetimes run SCRIPT`, `replay TRACE`, `demo` (and `demo --trace`).

Every command prints the text report of reports.write_text on stderr (--json: the JSON
report on stdout) and writes the four reports with --report DIR. `run` is tested in
subprocesses (`python -m esper_lifetimes run ...`): it switches tracking on for the
whole process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("esper_lifetimes")
jsonschema = pytest.importorskip("jsonschema")
from esper_lifetimes import cli  # noqa: E402
from esper_lifetimes.reports import load_schema  # noqa: E402
from esper_lifetimes.trace import TraceWriter  # noqa: E402

D, S = 0, 7
X, Y = 0x7F0000000000, 0x7F0000100000
N = 4096
REPORT_FILES = ["report.html", "report.json", "report.txt", "trace.json"]


def validate(doc: dict) -> None:
    jsonschema.Draft202012Validator(load_schema()).validate(doc)


def html_lanes_and_hazards(path) -> tuple[list[str], list[str]]:
    """The lanes of the page's timeline data and the kinds of its (static) hazard cards."""
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>")
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    lanes = [lane["name"] for lane in json.loads(data.group(1))["lanes"]]
    return lanes, re.findall(r'class="hz" id="hz\d+" data-hazard="\d+" data-kind="([a-z-]+)"', page)


# ---------------------------------------------------------------------------------------
# replay


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
    assert out == ""
    assert err == (
        f"esper-lifetimes: 4 events, 2 streams, 1 storage from {traces['clean']}\n"
        "esper-lifetimes: no hazards found.\n"
    )


def test_advice_only_exits_0_and_is_reported(traces, capsys):
    status, _, err = run(["replay", traces["advice"]], capsys)
    assert status == 0
    assert "1 distinct hazard (1 occurrence): 0 errors, 1 advice" in err
    assert "redundant-record-stream (advice): 1 distinct hazard, 1 occurrence" in err
    status, _, _ = run(["replay", "--fail-on", "advice", traces["advice"]], capsys)
    assert status == 1


def test_errors_exit_1_grouped_by_kind_with_counts(traces, capsys):
    status, out, err = run(["replay", traces["errors"]], capsys)
    assert status == 1
    assert out == ""
    assert "4 distinct hazards (6 occurrences): 3 errors, 1 advice" in err
    assert "unsynced-free (error): 2 distinct hazards, 4 occurrences" in err
    assert "reuse-race (error): 1 distinct hazard, 1 occurrence" in err
    assert "redundant-record-stream (advice): 1 distinct hazard, 1 occurrence" in err
    # errors before advice; each hazard with its sites, streams and fix
    assert err.index("unsynced-free (error)") < err.index("reuse-race (error)")
    assert err.index("reuse-race (error)") < err.index("redundant-record-stream (advice)")
    assert "train.py:11" in err and "train.py:21" in err and "streams: stream 0x0, side" in err
    assert "  fix: " in err
    status, _, _ = run(["replay", "--fail-on", "never", traces["errors"]], capsys)
    assert status == 0


def test_json_report_validates(traces, capsys):
    status, out, err = run(["replay", "--json", traces["errors"]], capsys)
    assert status == 1
    assert err == ""
    report = json.loads(out)
    validate(report)
    assert report["meta"]["trace"] == traces["errors"]
    assert report["summary"]["errors"] == 3 and report["summary"]["advice"] == 1
    assert report["summary"]["kinds"] == {
        "unsynced-free": {"severity": "error", "distinct": 2, "occurrences": 4},
        "reuse-race": {"severity": "error", "distinct": 1, "occurrences": 1},
        "redundant-record-stream": {"severity": "advice", "distinct": 1, "occurrences": 1},
    }
    assert len(report["hazards"]) == 4
    assert all(h["message"] and h["opened_at"] is not None for h in report["hazards"])
    assert report["timeline"]["events"] == 23


def test_json_report_of_a_clean_trace_exits_0(traces, capsys):
    status, out, _ = run(["replay", traces["clean"], "--json"], capsys)
    assert status == 0
    assert json.loads(out)["hazards"] == []


def test_replay_report_dir(traces, tmp_path, capsys):
    status, _, err = run(["replay", traces["errors"], "--report", str(tmp_path / "r")], capsys)
    assert status == 1
    assert sorted(os.listdir(tmp_path / "r")) == REPORT_FILES
    assert f"esper-lifetimes: reports written to {tmp_path / 'r'}: report.txt" in err
    # the text file is the text on stderr
    text = (tmp_path / "r" / "report.txt").read_text()
    assert text in err
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    validate(doc)
    assert doc["timeline"]["events"] == 23 and doc["summary"]["distinct"] == 4
    chrome = json.loads((tmp_path / "r" / "trace.json").read_text())
    assert sum(1 for e in chrome["traceEvents"] if e.get("cat", "").startswith("hazard,")) >= 4
    lanes, cards = html_lanes_and_hazards(tmp_path / "r" / "report.html")
    assert lanes == ["side", "stream 0x0", "host"]
    assert cards == ["unsynced-free", "unsynced-free", "reuse-race", "redundant-record-stream"]


def test_missing_file_exits_2(tmp_path, capsys):
    status, out, err = run(["replay", str(tmp_path / "nope.jsonl")], capsys)
    assert status == 2
    assert out == ""
    assert err.startswith("esper-lifetimes: error: ") and "nope.jsonl" in err


def test_deeply_nested_json_exits_2_naming_the_line(traces, capsys):
    path = traces["clean"]
    with open(path, "a") as f:
        f.write("[" * 200_000 + "]" * 200_000 + "\n")
    status, out, err = run(["replay", path], capsys)
    assert status == 2
    assert f"{path}:6: malformed JSON: nested too deeply" in err


def test_a_cut_trace_replays_its_whole_lines_and_says_it_was_cut(traces, capsys):
    path = traces["errors"]
    with open(path, "a") as f:
        f.write('{"op":"free","ptr":')  # a writer killed mid-line
    status, out, err = run(["replay", path], capsys)
    assert status == 1  # the hazards before the cut are reported
    assert f"esper-lifetimes: warning: {path}:" in err and "the trace was cut" in err
    assert "unsynced-free (error)" in err


def test_a_trace_with_launches_replays(tmp_path, capsys):
    path = tmp_path / "launch.jsonl"
    with TraceWriter(path) as w:
        w.define_stream(S, "side")
        w.alloc(X, N, D, "k.py:1")
        w.launch(D, [], [X, N], "k.py:2")
        w.launch(S, [X, N], [], "k.py:3")  # reads D's write, unordered
    status, out, err = run(["replay", str(path), "--report", str(tmp_path / "r")], capsys)
    assert status == 1, err
    assert "unsynced-access (error)" in err
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    (h,) = doc["hazards"]
    assert h["kind"] == "unsynced-access" and h["opened_at"] == 3
    assert [a["role"] for a in h["anchors"]] == ["access", "access"]


def test_malformed_line_exits_2_naming_the_line(traces, capsys):
    path = traces["clean"]
    with open(path, "a") as f:
        f.write('{"op": "free", "ptr": \n')
    status, out, err = run(["replay", path], capsys)
    assert status == 2
    assert f"{path}:6: malformed JSON: Expecting value (column 23)" in err


def test_event_the_engine_rejects_exits_2_naming_the_line(traces, capsys):
    status, out, err = run(["replay", traces["bad_event"]], capsys)
    assert status == 2
    assert out == ""
    assert err.startswith(
        f"esper-lifetimes: error: {traces['bad_event']}:8: record_stream: UnknownStorageError"
    )


def test_foreign_file_exits_2(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"traceEvents": []}\n')
    status, _, err = run(["replay", str(path)], capsys)
    assert status == 2
    assert f"{path}:1: not an esper-lifetimes trace" in err


def test_report_dir_that_cannot_be_made_exits_2(traces, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    status, _, err = run(["replay", traces["errors"], "--report", str(tmp_path / "file")], capsys)
    assert status == 2
    assert "esper-lifetimes: error: cannot create the report directory" in err


def test_usage_errors_exit_2(capsys):
    for argv in (
        [],
        ["replay"],
        ["frobnicate"],
        ["run"],
        ["run", "--"],
        ["run", "--mode", "sometimes", "x.py"],
        ["run", "--mode", "always-on", "--sample", "2", "x.py"],
        ["run", "--fail-on", "warning", "x.py"],
        ["demo", "--nope"],
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert "usage: esper-lifetimes" in err, argv
        if argv[:1] == ["run"] and len(argv) <= 2:
            assert "error: the following arguments are required: SCRIPT\n" in err


def test_run_of_a_missing_script_exits_2_before_tracking(tmp_path, capsys):
    status, out, err = run(["run", str(tmp_path / "nope.py"), "--flag"], capsys)
    assert status == 2
    assert out == ""
    assert err == f"esper-lifetimes: error: cannot run '{tmp_path / 'nope.py'}': no such file\n"
    status, _, err = run(["run", str(tmp_path)], capsys)
    assert status == 2 and "not a file" in err
    status, _, err = run(["run", "--sample", "0.5", str(tmp_path / "nope.py")], capsys)
    assert status == 2 and "--sample applies to --mode always-on only" in err


# ---------------------------------------------------------------------------------------
# run: a real script in a real process

HAZARD = """\
import sys

import torch
from esper_lifetimes import virtual


def step():
    side = virtual.Stream(name="side")
    x = torch.ones(1024)  # allocated on the default stream
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        y = x * 2  # read on the side stream
    del x  # freed: no record_stream, no wait
    return y


if __name__ == "__main__":
    step()
    print("script args:", sys.argv)
"""

CLEAN = """\
import torch
from esper_lifetimes import virtual

from helper import HELPED  # the script's directory is on sys.path

side = virtual.Stream(name="side")
x = torch.ones(1024)
side.wait_stream(virtual.current_stream())
with virtual.stream(side):
    y = x * 2
x.record_stream(side)
del x
print("clean", HELPED, __name__)
"""

RAISES = """\
from hazard import step  # the script's directory is on sys.path


def main():
    step()  # leaves its hazard behind
    raise ValueError("boom")


main()
"""

ADVICE = """\
import torch
from esper_lifetimes import virtual

x = torch.ones(1024)
x.record_stream(virtual.current_stream())  # redundant: the allocation stream
del x
"""

ALWAYS_ON = """\
import torch
from esper_lifetimes import virtual

virtual.synchronize()  # a barrier: a window of tracked ops opens here (sample 1)
side = virtual.Stream(name="side")
x = torch.ones(1024)
side.wait_stream(virtual.current_stream())
with virtual.stream(side):
    y = x * 2
del x
z = torch.zeros(1024)  # the next allocation on the default stream: x's free is judged
virtual.synchronize()
"""


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    d = tmp_path_factory.mktemp("scripts")
    for name, text in {
        "hazard.py": HAZARD,
        "clean.py": CLEAN,
        "helper.py": "HELPED = 'helped'\n",
        "raises.py": RAISES,
        "exits.py": "import sys\n\nimport torch\n\nx = torch.ones(4)\nsys.exit(3)\n",
        "advice.py": ADVICE,
        "always_on.py": ALWAYS_ON,
    }.items():
        (d / name).write_text(text)
    return d


def esper(*argv: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ESPER_LIFETIMES"}
    return subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def hazard_run(scripts):
    """`run --report DIR hazard.py a --b`, once for the tests that read its results."""
    proc = esper("run", "--report", "rep", "hazard.py", "a", "--b", cwd=scripts)
    return proc, scripts / "rep"


def test_run_reports_a_planted_hazard_and_exits_1(hazard_run):
    proc, _ = hazard_run
    assert proc.returncode == 1, proc.stderr
    # the script ran as __main__ with its own arguments
    assert proc.stdout == "script args: ['hazard.py', 'a', '--b']\n"
    err = proc.stderr
    assert err.startswith(
        "esper-lifetimes: hazard.py ran under full tracking; its exit status: 0\n"
    )
    assert "1 distinct hazard (1 occurrence): 1 error, 0 advice" in err
    assert "unsynced-free (error): 1 distinct hazard, 1 occurrence" in err
    assert "streams: default, side" in err
    # the script's lines: sites and their source text
    assert re.search(r"allocated +hazard\.py:9 +on default +\| x = torch\.ones\(1024\)", err)
    assert re.search(r"used +hazard\.py:12 +on side +\| y = x \* 2", err)
    assert re.search(r"freed +hazard\.py:13 +\| del x", err)
    assert err.rstrip().endswith(
        "esper-lifetimes: reports written to rep: report.txt, report.json, trace.json, report.html"
    )


def test_run_report_dir_holds_the_four_reports(hazard_run):
    proc, rep = hazard_run
    assert sorted(os.listdir(rep)) == REPORT_FILES
    assert (rep / "report.txt").read_text() in proc.stderr
    doc = json.loads((rep / "report.json").read_text())
    validate(doc)
    assert doc["meta"]["program"] == "hazard.py"
    assert doc["meta"]["command"] == ["esper-lifetimes", "run", "hazard.py", "a", "--b"]
    assert doc["meta"]["mode"] == "full" and doc["meta"]["exit_status"] == 0
    (h,) = doc["hazards"]
    assert h["kind"] == "unsynced-free" and h["use_site"] == "hazard.py:12"
    assert h["source_lines"]["free_site"] == "del x  # freed: no record_stream, no wait"
    assert h["opened_at"] is not None and [a["role"] for a in h["anchors"]] == ["use", "free"]
    assert doc["timeline"]["clock"] == "wall" and doc["timeline"]["dropped"] == 0
    chrome = json.loads((rep / "trace.json").read_text())
    names = {e["name"] for e in chrome["traceEvents"]}
    assert "HAZARD unsynced-free #1" in names
    lanes, cards = html_lanes_and_hazards(rep / "report.html")
    assert lanes == ["default", "side", "host"]
    assert cards == ["unsynced-free"]
    page = (rep / "report.html").read_text()
    assert "hazard.py:12" in page and "y = x * 2" in page


def test_run_html_report_renders_in_a_headless_browser(hazard_run, tmp_path):
    from test_reports import BROWSER, run_browser

    if BROWSER is None:
        pytest.skip("no headless chromium (make setup installs it)")
    _, rep = hazard_run
    dom = run_browser("--dump-dom", (rep / "report.html").resolve().as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-rendered="1"' in dom.stdout
    lanes = re.findall(r'<g class="lane(?: host)?" data-lane="\d+" data-name="([^"]*)"', dom.stdout)
    assert lanes == ["default", "side", "host"]
    links = re.findall(
        r'<g class="hazard-link [a-z]+" data-hazard="\d+" data-kind="([a-z-]+)"', dom.stdout
    )
    assert links == ["unsynced-free"]


def test_run_of_a_clean_script_exits_0(scripts, tmp_path):
    proc = esper("run", str(scripts / "clean.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "clean helped __main__\n"
    assert proc.stderr.endswith("esper-lifetimes: no hazards found.\n")


def test_run_of_a_script_that_raises_keeps_its_traceback_and_status(scripts):
    proc = esper("run", "raises.py", cwd=scripts)
    assert proc.returncode == 1
    err = proc.stderr
    # the traceback as `python raises.py` prints it: the script's frames only
    assert err.startswith(
        textwrap.dedent(
            """\
            Traceback (most recent call last):
              File "raises.py", line 9, in <module>
                main()
              File "raises.py", line 6, in main
                raise ValueError("boom")
            ValueError: boom
            esper-lifetimes: raises.py ran under full tracking; its exit status: 1
            """
        )
    )
    # the report is still printed, with the hazard found before the exception
    assert "unsynced-free (error): 1 distinct hazard" in err
    assert re.search(r"freed +hazard\.py:13 +\| del x", err)


def test_run_keeps_the_scripts_sys_exit_status(scripts):
    proc = esper("run", "exits.py", cwd=scripts)
    assert proc.returncode == 3
    assert "esper-lifetimes: exits.py ran under full tracking; its exit status: 3" in proc.stderr
    assert proc.stderr.endswith("esper-lifetimes: no hazards found.\n")


def test_run_fail_on(scripts):
    proc = esper("run", "--fail-on", "never", "hazard.py", cwd=scripts)
    assert proc.returncode == 0
    assert "unsynced-free (error)" in proc.stderr
    proc = esper("run", "advice.py", cwd=scripts)
    assert proc.returncode == 0
    assert "redundant-record-stream (advice)" in proc.stderr
    proc = esper("run", "--fail-on", "advice", "advice.py", cwd=scripts)
    assert proc.returncode == 1


def test_run_always_on_with_sample_1(scripts):
    proc = esper("run", "--mode", "always-on", "--sample", "1", "always_on.py", cwd=scripts)
    assert proc.returncode == 1, proc.stderr
    assert re.match(
        r"esper-lifetimes: always_on\.py ran under always-on tracking \(sample 1: \d+ windows "
        r"tracked at \d+ synchronizations\); its exit status: 0\n",
        proc.stderr,
    )
    assert "unsynced-free (error): 1 distinct hazard" in proc.stderr
    assert re.search(r"used +always_on\.py:9 +on side", proc.stderr)


# ---------------------------------------------------------------------------------------
# demo


def test_demo_runs_the_torch_example_and_reports(tmp_path):
    # in a process of its own: a tracker also names the virtual streams other tests left
    proc = esper("demo", "--report", "demo", cwd=tmp_path)
    status, out, err = proc.returncode, proc.stdout, proc.stderr
    assert status == 0, err
    assert out.startswith("esper-lifetimes demo: one vectorized training step of 3 environments")
    # the report: the real hazard at the example's lines, the redundant calls as advice
    assert re.search(r"esper-lifetimes: \d+ events, 4 streams, \d+ storages\n", err)
    # Of the three overrides freed by rebinding, only the first is still uncovered when an
    # allocation on the default stream (the third override) can take its block: the
    # pass's synchronize orders the other two uses before any reuse.
    assert re.search(r"unsynced-free \(error\): 1 distinct hazard, 1 occurrence\b", err)
    assert "redundant-record-stream (advice): 2 distinct hazards, 6 occurrences" in err
    assert re.search(r"used +vectorized_step\.py:\d+ +on env0 +\| scores\.append", err)
    assert "override.record_stream(env.stream)" in out
    assert "Safe:\n  - the cloned slices handed to the env streams" in out
    assert out.endswith(
        "The corrected step (train_step_fixed, validation_pass_fixed): no hazards found.\n"
    )
    rep = tmp_path / "demo"
    assert sorted(os.listdir(rep)) == REPORT_FILES
    validate(json.loads((rep / "report.json").read_text()))
    lanes, cards = html_lanes_and_hazards(rep / "report.html")
    assert lanes == ["default", "env0", "env1", "env2", "host"]
    assert cards[0] == "unsynced-free" and cards[-1] == "redundant-record-stream"


def test_demo_json(capsys):
    status, out, err = run(["demo", "--json"], capsys)
    assert status == 0
    assert err == ""
    report = json.loads(out)
    validate(report)
    assert report["summary"]["kinds"]["unsynced-free"]["occurrences"] == 1
    assert report["summary"]["kinds"]["redundant-record-stream"]["distinct"] == 2
    assert report["timeline"] is None


def test_demo_trace_replays_the_bundled_trace(capsys):
    status, out, err = run(["demo", "--trace"], capsys)
    assert status == 0, err
    assert out.startswith("esper-lifetimes demo --trace: one training step on 4 environment")
    assert "Fix: override.record_stream(s)" in out
    assert err.startswith(
        "esper-lifetimes: 204 events, 5 streams, 38 storages from training_step.jsonl (bundled)\n"
        "esper-lifetimes: 3 distinct hazards (5 occurrences): 2 errors, 1 advice\n"
    )
    # the third free at train.py:47 is followed by a device_synchronize before any reuse
    assert "unsynced-free (error): 1 distinct hazard, 2 occurrences" in err
    assert "reuse-race (error): 1 distinct hazard, 2 occurrences" in err
    assert "redundant-record-stream (advice): 1 distinct hazard, 1 occurrence" in err
    assert "env0" in err and "train.py:47" in err


def test_demo_trace_json(capsys):
    status, out, _ = run(["demo", "--trace", "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    validate(report)
    assert report["summary"]["errors"] == 2 and report["summary"]["advice"] == 1
    assert report["summary"]["kinds"]["unsynced-free"]["occurrences"] == 2


# ---------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["replay", "--help"], ["demo", "--help"]]
)
def test_help(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    help_text = proc.stdout
    assert help_text.startswith("usage: esper-lifetimes")
    assert "exit status" in help_text
    if argv[0] == "--help":
        for command in ("run", "replay", "demo"):
            assert re.search(rf"^ +{command} +\w", help_text, re.M)
    else:
        assert "--report DIR" in help_text
    if argv[0] == "run":
        assert "SCRIPT [ARGS ...]" in help_text
        for option in ("--mode {full,always-on}", "--sample P", "--fail-on"):
            assert option in help_text
        assert "130 for KeyboardInterrupt" in help_text
    if argv[0] == "replay":
        assert "--json" in help_text and "--fail-on" in help_text
    if argv[0] == "demo":
        assert "--trace" in help_text


def test_version():
    proc = subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert re.fullmatch(r"esper-lifetimes \d+\.\d+\.\d+\n", proc.stdout)
