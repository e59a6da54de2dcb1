"""Collectives in the model, per-rank tracking and the merged report, on two real ranks.

The ranks run tests/distributed_worker.py over gloo, started as users start them:
``torch.multiprocessing.spawn`` and ``torchrun --nproc-per-node 2`` (wrapping
``esper-lifetimes run``). Each launch is one test (under pytest-xdist a shared fixture
would launch twice) with a hard timeout: a rank that hangs is killed, the test fails.
CUDA/NCCL variants are marked ``cuda``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distributed_worker.py")
SPAWN_TIMEOUT = 150
TORCHRUN_TIMEOUT = 180

pytestmark = pytest.mark.filterwarnings("ignore")


def _line(marker: str) -> str:
    """``distributed_worker.py:N`` of the line marked ``# L:marker``."""
    with open(WORKER, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# L:{marker}"):
                return f"distributed_worker.py:{n}"
    raise AssertionError(f"no line marked {marker}")


def _at(site: str | None, marker: str) -> bool:
    return site is not None and site.endswith(_line(marker))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(names: list[str], out: str, world: int, backend: str) -> dict[int, dict]:
    """Runs ``names`` on ``world`` ranks under torch.multiprocessing.spawn, killed past
    SPAWN_TIMEOUT; returns {rank: scenarios}."""
    import torch.multiprocessing as mp

    if HERE not in sys.path:
        sys.path.insert(0, HERE)  # the children import distributed_worker
    import distributed_worker

    ctx = mp.spawn(
        distributed_worker.spawn_entry,
        args=(world, _free_port(), out, names, backend),
        nprocs=world,
        join=False,
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise AssertionError(f"the ranks did not finish within {SPAWN_TIMEOUT} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = {}
    for r in range(world):
        with open(os.path.join(out, f"rank{r}", "scenarios.json"), encoding="utf-8") as f:
            results[r] = json.load(f)
    return results


def _only(res: dict, kind: str) -> dict:
    hs = res["hazards"]
    assert [h["kind"] for h in hs] == [kind], hs
    return hs[0]


def test_two_ranks_spawn_gloo(tmp_path):
    """Async collectives on the group's internal stream: read or overwrite before wait()
    is an unsynced-access there, naming the collective and the rank; waited is clean;
    sync collectives run on the current stream; emulated CUDA code likewise; functional
    collectives; DDP's C++ collectives counted unseen."""
    from distributed_worker import SPAWNED  # noqa: F401 - import check before spawning

    names = [f.__name__ for f in SPAWNED]
    results = _spawn(names, str(tmp_path), 2, "gloo")
    for rank, res in results.items():
        for name in names:
            assert res[name]["diagnostics"] == [], (rank, name, res[name]["diagnostics"])
        internal = f"gloo:group0:cpu all_reduce (rank {rank})"

        h = _only(res["read_before_wait"], "unsynced-access")
        assert h["use_stream_name"] == "default" and h["other_stream_name"] == internal
        assert _at(h["use_site"], "read-early") and _at(h["other_site"], "early-coll")
        assert h["live"]

        assert res["read_after_wait"]["hazards"] == []
        assert res["read_after_wait"]["seen"] == {"all_reduce": 1}
        assert res["read_after_wait"]["pending"] == 0

        h = _only(res["input_overwritten"], "unsynced-access")
        assert h["other_stream_name"] == internal
        assert _at(h["use_site"], "overwrite") and _at(h["other_site"], "overwrite-coll")

        sync = res["sync_collectives"]
        assert sync["hazards"] == []
        assert set(sync["seen"]) == {
            "all_reduce",
            "all_gather_into_tensor",
            "reduce_scatter_tensor",
            "broadcast",
            "all_to_all_single",
            "all_gather",
        }

        h = _only(res["emulated_read_before_wait"], "unsynced-access")
        assert h["other_stream_name"] == f"gloo:group0:dev0 all_reduce (rank {rank})"
        assert h["use_stream_name"] in ("default", "cuda:0 default")  # emulation names it
        assert _at(h["use_site"], "emu-early") and _at(h["other_site"], "emu-coll")
        assert res["emulated_waited"]["hazards"] == []
        emu = res["emulated_bucketed_allreduce"]
        assert emu["hazards"] == [] and emu["seen"] == {"all_reduce": 6}
        assert res["future_and_polling"]["hazards"] == []
        assert res["future_and_polling"]["pending"] == 0

        # functional collectives: the input overwritten before wait_tensor; an
        # AsyncCollectiveTensor waits at its first use
        h = _only(res["functional"], "unsynced-access")
        assert h["other_stream_name"] == f"gloo:group0:cpu functional all_reduce (rank {rank})"
        assert _at(h["use_site"], "fc-overwrite") and _at(h["other_site"], "fc-coll")
        assert res["functional"]["seen"] == {"functional all_reduce": 2}

        # DDP's reducer issues its collectives from C++: reported as unseen, with lines
        ddp = res["ddp"]
        assert ddp["hazards"] == [] and ddp["seen"] == {}
        assert any(
            k.startswith("c10d::allreduce_ at ") and k.endswith(_line("ddp-backward"))
            for k in ddp["unseen"]
        ), ddp
        assert ddp["tracker_unseen"] == ddp["unseen"]  # and in the tracker's report
        assert " ran unseen (" in ddp["report"] and "c10d::allreduce_ at " in ddp["report"]
        # with a communication hook in Python, the gradient all-reduce is seen (on the
        # current stream: DDP's reducer waits on the hook's future in C++, unseen)
        hook = res["ddp_comm_hook"]
        assert hook["hazards"] == [] and hook["seen"].get("all_reduce", 0) >= 1, hook
        assert not any(k.startswith("c10d::allreduce_") for k in hook["unseen"]), hook
        assert any(
            k.startswith("all_reduce in a DDP communication hook, waited on in C++ at ")
            and k.endswith(_line("hook-backward"))
            for k in hook["unseen"]
        ), hook


def _torchrun(tmp_path) -> tuple[str, str, subprocess.Popen]:
    reports, scen = str(tmp_path / "reports"), str(tmp_path / "scenarios")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [
        torchrun if os.path.exists(torchrun) else "torchrun",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "esper_lifetimes",
        "run",
        "--fail-on",
        "never",
        "--report",
        reports,
        WORKER,
        scen,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("ESPER_LIFETIMES", None)
    # its own process group: past the timeout, torchrun and its ranks are killed together
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TORCHRUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"torchrun did not finish within {TORCHRUN_TIMEOUT} s") from None
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return reports, scen, proc


def test_torchrun_ranks_and_merged_report(tmp_path):
    """torchrun --nproc-per-node 2 wrapping esper-lifetimes run: every rank tracked, its
    report in REPORTS/rank<R> tagged with rank and world size; the merge names rank,
    collective and lines, shared hazards once; side-stream frees, point-to-point,
    bucketed overlap and FSDP2."""
    reports, scen, _proc = _torchrun(tmp_path)
    res = {}
    for r in (0, 1):
        with open(os.path.join(scen, f"rank{r}", "scenarios.json"), encoding="utf-8") as f:
            res[r] = json.load(f)
    for r in (0, 1):
        for name, v in res[r].items():
            assert v["diagnostics"] == [], (r, name, v["diagnostics"])
        # a buffer freed after a collective on a side stream: the allocation stream
        # never waited on the internal stream
        h = _only(res[r]["free_under_side_stream"], "unsynced-free")
        assert h["use_stream_name"] == f"gloo:group0:cpu all_reduce (rank {r})"
        assert _at(h["use_site"], "side-coll") and _at(h["free_site"], "side-free")
        assert _at(h["other_site"], "side-next")
        # written correctly: clean
        assert res[r]["bucketed_allreduce"]["hazards"] == []
        assert res[r]["bucketed_allreduce"]["seen"] == {"all_reduce": 6}
        assert res[r]["bucketed_allreduce"]["pending"] == 0
        # FSDP2: its all-gathers and reduce-scatters are seen, and it is clean
        fsdp = res[r]["fsdp2"]
        assert fsdp["hazards"] == []
        assert fsdp["seen"].get("all_gather_single", 0) > 0
        assert fsdp["seen"].get("reduce_scatter_single", 0) > 0
        p2p = res[r]["p2p"]
        assert p2p["seen"]["batch_isend_irecv isend"] == 1
    assert res[0]["p2p"]["hazards"] == []
    h = _only(res[1]["p2p"], "unsynced-access")
    assert h["other_stream_name"] == "gloo:group0:cpu:p2p irecv (rank 1)"
    assert _at(h["use_site"], "p2p-early") and _at(h["other_site"], "p2p-recv")

    # each rank's own report, tagged
    for r in (0, 1):
        with open(os.path.join(reports, f"rank{r}", "report.json"), encoding="utf-8") as f:
            rep = json.load(f)
        assert rep["meta"]["rank"] == r and rep["meta"]["world_size"] == 2
        assert rep["meta"]["collectives"] == {"all_reduce": 2}
        assert len(rep["hazards"]) == (1 if r == 0 else 2)

    # the merge
    merged_dir = str(tmp_path / "merged")
    proc = subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", "merge", reports, "--report", merged_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # errors were found
    text = proc.stdout
    assert "2 rank reports (ranks 0, 1; world size 2)" in text
    assert "2 distinct hazards: 2 errors, 0 advice; 1 shared by several ranks" in text
    assert "#1 unsynced-access (error) on ranks 0, 1; collective all_reduce  x2" in text
    assert "#2 unsynced-access (error) on rank 1; collective all_reduce  x1" in text
    for n in (24, 25, 26, 29, 30, 32):
        assert f"examples/allreduce_overlap.py:{n}" in text, (n, text)
    # one stream name for both ranks (the rank tag is in the hazard's ranks)
    assert "on gloo:group0:cpu all_reduce " in text and "all_reduce (rank" not in text
    # the README shows this output, addresses aside
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    shown = readme.split("$ esper-lifetimes merge out/\n", 1)[1].split("```", 1)[0]

    def _norm(t: str) -> str:
        return re.sub(r"0x[0-9a-f]+", "0x?", t).strip()

    assert _norm(text) == _norm(shown)
    with open(os.path.join(merged_dir, "report.json"), encoding="utf-8") as f:
        merged = json.load(f)
    assert merged["schema"] == "esper-lifetimes-merged-report"
    assert [h["ranks"] for h in merged["hazards"]] == [[0, 1], [1]]
    assert merged["hazards"][0]["count"] == 2
    assert merged["hazards"][0]["use_site"] == "examples/allreduce_overlap.py:26"
    with open(os.path.join(merged_dir, "trace.json"), encoding="utf-8") as f:
        trace = json.load(f)
    names = {
        e["args"]["name"].split(":")[0]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    assert names == {"rank 0", "rank 1"}
    pids = {e["pid"] for e in trace["traceEvents"]}
    assert len(pids) >= 2
    with open(os.path.join(merged_dir, "report.html"), encoding="utf-8") as f:
        page = f.read()
    assert "unsynced-access" in page and "rank1/report.html" in page


def test_merge_rejects_a_directory_without_reports(tmp_path):
    from esper_lifetimes import cli

    assert cli.main(["merge", str(tmp_path)]) == 2


@pytest.mark.cuda
def test_nccl_internal_stream(tmp_path):
    """NCCL with a world size of 1 still runs async collectives on its internal stream."""
    results = _spawn(["cuda_read_before_wait"], str(tmp_path), 1, "nccl")
    res = results[0]["cuda_read_before_wait"]
    h = _only(res, "unsynced-access")
    assert h["other_stream_name"] == "nccl:group0:dev0 all_reduce (rank 0)"
    assert _at(h["use_site"], "cuda-early") and _at(h["other_site"], "cuda-coll")
    assert res["diagnostics"] == []
