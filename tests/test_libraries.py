"""Real multi-stream libraries from PyPI, unmodified, under ``emulate_cuda()``.

* timm's ``PrefetchLoader`` (data on a side stream, normalized there): timm 1.0.20 lets the
  next batch's allocation on the prefetch stream take the memory of the batch the consumer
  is still using (no ``stream.wait_stream(consumer)``, no ``record_stream``): pinned in
  one test, the fixed release (what ``make test`` installs) in another.
* diffusers' group offloading with ``use_stream=True`` (weights onloaded on a side stream,
  pinned CPU copies), on a tiny ``UNet2DModel`` built from its config.
* a ``DataLoader(pin_memory=True)`` pipeline with a worker, so batches are pinned by its
  pin thread, feeding a side stream.

No downloads: models are built from configs, data is random. The old timm lives in
``.venv/timm-1.0.20`` (``make test`` installs it there, beside the current one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("esper_lifetimes.tracking")

import esper_lifetimes  # noqa: E402
from conftest import HAS_CUDA  # noqa: E402
from esper_lifetimes.emulate import emulate_cuda  # noqa: E402

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="emulation is for machines without a GPU")

ROOT = Path(__file__).resolve().parent.parent
OLD_TIMM = ROOT / ".venv" / "timm-1.0.20"

# A training-style consumer of timm's PrefetchLoader: everything stays on the device (the
# loss is accumulated there), as a loop does between logging steps.
TIMM_SCRIPT = textwrap.dedent(
    """\
    import torch
    import timm
    from timm.data.loader import PrefetchLoader

    print("timm", timm.__version__)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 4, (24,))
    data = torch.utils.data.TensorDataset(images, labels)
    loader = torch.utils.data.DataLoader(data, batch_size=4, pin_memory=True)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).cuda().eval()
    total = torch.zeros((), device="cuda")
    with torch.no_grad():
        for x, y in PrefetchLoader(loader, device=torch.device("cuda")):
            out = model(x)  # @use
            total += torch.nn.functional.cross_entropy(out, y)
    print("batches done, loss", round(float(total), 3))
    """
)


def _run_timm(tmp_path: Path, old: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "prefetch.py"
    script.write_text(TIMM_SCRIPT)
    env = dict(os.environ)
    env.pop("ESPER_LIFETIMES", None)
    if old:
        env["PYTHONPATH"] = os.pathsep.join([str(OLD_TIMM), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "esper_lifetimes", "run", "--emulate-cuda", str(script)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _timm_loader_line(pattern: str, root: Path) -> int:
    text = (root / "timm" / "data" / "loader.py").read_text()
    for i, line in enumerate(text.splitlines(), 1):
        if re.search(pattern, line):
            return i
    raise AssertionError(pattern)


def test_timm_prefetch_loader_fixed_release_is_clean(tmp_path):
    timm = pytest.importorskip("timm")
    r = _run_timm(tmp_path, old=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"timm {timm.__version__}" in r.stdout and "batches done" in r.stdout
    assert "no hazards found" in r.stderr
    assert "internal failures" not in r.stderr


@pytest.mark.skipif(not OLD_TIMM.is_dir(), reason="timm 1.0.20 not installed (make test does)")
def test_timm_1_0_20_prefetch_loader_reuses_a_batch_still_in_use(tmp_path):
    r = _run_timm(tmp_path, old=True)
    out = r.stdout + r.stderr
    assert "timm 1.0.20" in r.stdout, out
    assert r.returncode == 1, out
    assert "unsynced-free (error)" in out, out
    # allocated on the prefetch stream in timm (the normalized batch, the target copy),
    # used by the consumer on the default stream, freed when the consumer's loop rebinds
    # it, and judged at the next prefetch copy on the side stream
    norm = _timm_loader_line(r"next_input = next_input\.to\(self\.img_dtype\)", OLD_TIMM)
    target = _timm_loader_line(r"next_target = next_target\.to\(device=", OLD_TIMM)
    copy = _timm_loader_line(r"next_input = next_input\.to\(device=", OLD_TIMM)
    lines = TIMM_SCRIPT.splitlines()
    loop = next(i for i, ln in enumerate(lines, 1) if "in PrefetchLoader(" in ln)
    use = next(i for i, ln in enumerate(lines, 1) if ln.endswith("# @use"))
    for line in (norm, target, copy):
        assert f"loader.py:{line}" in out, (line, out)
    assert f"prefetch.py:{loop}" in out and "resnet.py" in out, out
    assert f"prefetch.py:{use + 1}" in out, out  # the loss reads the target


def _tiny_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


@pytest.mark.parametrize("record_stream", [False, True])
def test_diffusers_group_offloading_on_a_stream(record_stream):
    pytest.importorskip("diffusers")
    pytest.importorskip("accelerate")
    from diffusers.hooks import apply_group_offloading

    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(0)
    want = _tiny_unet()(x, 1).sample  # the same weights, plain CPU
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        torch.manual_seed(0)
        model = _tiny_unet()
        apply_group_offloading(
            model,
            onload_device=torch.device("cuda"),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            record_stream=record_stream,
        )
        xd = x.cuda()
        for _ in range(2):
            out = model(xd, 1).sample
        assert out.is_cuda
        assert torch.allclose(out.cpu(), want, atol=1e-5)  # offloading changed nothing
        stats = t.engine.stats()
    assert t.errors == [], t.report()
    assert t.diagnostics == []
    # the side stream was seen at work: the verdict is not an empty run's
    assert stats["streams"] >= 2 and stats["events_processed"] > 100


def test_dataloader_pin_thread_feeding_a_side_stream_without_a_wait():
    ds = torch.utils.data.TensorDataset(torch.randn(12, 256))
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        loader = torch.utils.data.DataLoader(ds, batch_size=4, pin_memory=True, num_workers=1)
        side = torch.cuda.Stream()
        acc = torch.zeros(4, 256, device="cuda")
        for (b,) in loader:
            assert b.is_pinned()
            with torch.cuda.stream(side):
                d = b.to("cuda", non_blocking=True)  # @copy
            acc += d  # @use
            d = None
    kinds = {h.kind for h in t.errors}
    assert "unsynced-access" in kinds, t.report()
    h = next(h for h in t.errors if h.kind == "unsynced-access")
    from conftest import tag_of

    assert tag_of(h.use_site) == "use" and tag_of(h.other_site) == "copy"
