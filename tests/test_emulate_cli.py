"""``esper-lifetimes run --emulate-cuda`` and ``ESPER_LIFETIMES=...,emulate=cuda`` on an
unmodified CUDA training script, in a fresh interpreter each (as a user runs it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("esper_lifetimes.tracking")

from conftest import HAS_CUDA  # noqa: E402

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="emulation is for machines without a GPU")

# A CUDA training step as people write it: a pinned DataLoader, a side stream that
# prefetches the next batch with non-blocking copies, an event, autocast, GradScaler and
# an AdamW step, then a running metric on the device. With "--bug" the consumer forgets
# record_stream: the batch, allocated on the side stream and last used on the default
# stream by the metric, is freed when the loop rebinds it, and the next prefetch on the
# side stream may get its memory while the metric still reads it.
TRAIN = textwrap.dedent(
    """\
    import sys

    import torch

    bug = "--bug" in sys.argv
    assert torch.cuda.is_available(), "needs a GPU"
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)

    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8, pin_memory=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    side = torch.cuda.Stream()


    def prefetch(it):
        try:
            x, y = next(it)
        except StopIteration:
            return None
        with torch.cuda.stream(side):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return x, y, ready


    it = iter(loader)
    nxt = prefetch(it)
    losses = []
    err = torch.zeros((), device=device)
    while nxt is not None:
        x, y, ready = nxt  # @free
        nxt = prefetch(it)
        torch.cuda.current_stream().wait_event(ready)
        if not bug:
            x.record_stream(torch.cuda.current_stream())
            y.record_stream(torch.cuda.current_stream())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)  # GradScaler reads found_inf: the host waits here
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        with torch.no_grad():
            err += (model(x).float() - y).abs().sum()  # @use
    torch.cuda.synchronize()
    print(f"trained {len(losses)} steps on {device}, last loss {losses[-1].item():.4f}")
    """
)


def _lines(text: str) -> dict[str, int]:
    return {
        m.group(1): i
        for i, line in enumerate(text.splitlines(), 1)
        if (m := re.search(r"# @([\w-]+)\s*$", line))
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ESPER_LIFETIMES", None)
    return env


def _run(
    args: list[str], cwd: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def script(tmp_path):
    p = tmp_path / "train.py"
    p.write_text(TRAIN)
    return p


def test_correct_cuda_training_script_exits_0(script):
    r = _run(["run", "--emulate-cuda", str(script)], str(script.parent))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trained 8 steps on cuda:0" in r.stdout
    assert "ran under full tracking on emulated CUDA; its exit status: 0" in r.stderr
    assert "no hazards found" in r.stderr and "internal failures" not in r.stderr


def test_missing_record_stream_exits_1_at_the_users_lines(script):
    r = _run(["run", "--emulate-cuda", str(script), "--bug"], str(script.parent))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "trained 8 steps on cuda:0" in r.stdout  # the script itself ran to its end
    assert "unsynced-free (error)" in out, out
    lines = _lines(TRAIN)
    assert f"train.py:{lines['use']}" in out and f"train.py:{lines['free']}" in out, out
    assert "cuda:0 default" in out


def test_without_emulation_the_script_cannot_run_here(script):
    r = _run(["run", str(script)], str(script.parent))
    assert r.returncode != 0
    assert "needs a GPU" in r.stderr


@pytest.mark.parametrize("mode", ["full", "always-on"])
def test_environment_switch(script, mode):
    env = _env()
    env["ESPER_LIFETIMES"] = f"{mode},emulate=cuda" + (",sample=1" if mode == "always-on" else "")
    # the switch is read when esper_lifetimes is imported: the launcher imports it first
    launch = (
        "import esper_lifetimes, runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    r = subprocess.run(
        [sys.executable, "-c", launch, str(script), "--bug"],
        cwd=str(script.parent),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr  # hazards are logged, never raised into the loop
    assert "trained 8 steps on cuda:0" in r.stdout
    assert "unsynced-free" in r.stderr, r.stderr
