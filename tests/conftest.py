"""Shared test set-up: the ``cuda`` skip, and the two backends scenario bodies run on.

A scenario body is written once against ``B`` (a backend): ``B.Stream()``,
``B.stream(s)``, ``B.randn(n)``, ``B.pin(t)``, ``B.to_host(t, nb)``, ... On the
``virtual`` backend these are esper_lifetimes.virtual streams and CPU tensors; on the
``cuda`` backend (marked ``cuda``, skipped without a GPU) they are torch.cuda streams and
CUDA tensors, unchanged.

Source lines are checked with tags: a line ending in ``# @use`` is the line tagged
``use``; :func:`tag_of` maps a hazard's site back to its tag.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def _cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False


HAS_CUDA = _cuda_available()


def _ignore_this_file() -> None:
    # The backends below are helpers, not the scenario: sites skip them as they skip torch.
    try:
        from esper_lifetimes.sites import ignore_file
    except ImportError:  # pragma: no cover - the engine is not built
        return
    ignore_file(__file__)


_ignore_this_file()


def _can_emulate() -> bool:
    if os.environ.get("ESPER_TEST_NO_EMULATION"):
        return False
    try:
        import esper_lifetimes.emulate  # noqa: F401
    except Exception:  # pragma: no cover - the engine is not built
        return False
    return True


# Without a GPU, the CUDA-marked variants run under esper_lifetimes.emulate_cuda(): the same
# bodies on the real torch.cuda API (ESPER_TEST_NO_EMULATION=1 skips them instead). With a
# GPU they run on it, unemulated.
EMULATE_CUDA = not HAS_CUDA and _can_emulate()


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "real_cuda: a cuda test that emulation cannot run (NCCL, graphs, kernels)"
    )


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if HAS_CUDA:
        return
    if EMULATE_CUDA:
        real = pytest.mark.skip(reason="needs a real CUDA GPU: not emulated (NCCL, graphs)")
        for item in items:
            if item.get_closest_marker("cuda") is not None and (
                item.get_closest_marker("real_cuda") is not None or "nccl" in item.name
            ):
                item.add_marker(real)
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


class VirtualBackend:
    """Virtual streams; CPU tensors stand for device memory."""

    name = "virtual"
    device = "cpu"
    live = True  # hazards over unsynchronized virtual work are known to be in flight

    def __init__(self) -> None:
        from esper_lifetimes import virtual

        self.v = virtual
        self.Event = virtual.Event
        self.stream = virtual.stream
        self.current_stream = virtual.current_stream
        self.default_stream = virtual.default_stream
        self.synchronize = virtual.synchronize

    def Stream(self, name: str | None = None) -> Any:  # noqa: N802 - mirrors torch
        return self.v.Stream(name=name)

    def track(self, on_hazard: str = "collect") -> Any:
        import esper_lifetimes

        return esper_lifetimes.track(on_hazard, cpu="device")

    def pin(self, t: Any) -> Any:
        return self.v.pin_memory(t)

    def to_host(self, t: Any, non_blocking: bool = False) -> Any:
        return self.v.to_host(t, non_blocking)

    def to_device(self, t: Any, non_blocking: bool = False) -> Any:
        return self.v.to_device(t, non_blocking)

    # factories on the device
    def randn(self, *size: int) -> Any:
        return torch.randn(*size)

    def rand(self, *size: int) -> Any:
        return torch.rand(*size)

    def zeros(self, *size: int) -> Any:
        return torch.zeros(*size)

    def ones(self, *size: int) -> Any:
        return torch.ones(*size)

    def full(self, size: Any, value: float) -> Any:
        return torch.full(size, value)

    def empty(self, *size: int) -> Any:
        return torch.empty(*size)

    def tensor(self, data: Any) -> Any:
        """``torch.tensor(data)`` on the device: a blocking copy from host data."""
        return torch.tensor(data)


class CudaBackend(VirtualBackend):
    """torch.cuda streams and CUDA tensors."""

    name = "cuda"
    device = "cuda"
    live = None  # a real stream's progress is unknown without a query

    def __init__(self) -> None:
        self.Event = torch.cuda.Event
        self.stream = torch.cuda.stream
        self.current_stream = torch.cuda.current_stream
        self.default_stream = torch.cuda.default_stream
        self.synchronize = torch.cuda.synchronize

    def Stream(self, name: str | None = None) -> Any:  # noqa: N802
        return torch.cuda.Stream()

    def track(self, on_hazard: str = "collect") -> Any:
        import esper_lifetimes

        return esper_lifetimes.track(on_hazard, cpu="host")

    def pin(self, t: Any) -> Any:
        return t.pin_memory()

    def to_host(self, t: Any, non_blocking: bool = False) -> Any:
        return t.to("cpu", non_blocking=non_blocking)

    def to_device(self, t: Any, non_blocking: bool = False) -> Any:
        return t.to("cuda", non_blocking=non_blocking)

    def randn(self, *size: int) -> Any:
        return torch.randn(*size, device="cuda")

    def rand(self, *size: int) -> Any:
        return torch.rand(*size, device="cuda")

    def zeros(self, *size: int) -> Any:
        return torch.zeros(*size, device="cuda")

    def ones(self, *size: int) -> Any:
        return torch.ones(*size, device="cuda")

    def full(self, size: Any, value: float) -> Any:
        return torch.full(size, value, device="cuda")

    def empty(self, *size: int) -> Any:
        return torch.empty(*size, device="cuda")

    def tensor(self, data: Any) -> Any:
        return torch.tensor(data, device="cuda")


@pytest.fixture(autouse=True)
def _cuda_emulation(request: Any) -> Any:
    """A CUDA-marked test on a machine without a GPU runs under emulate_cuda()."""
    if not EMULATE_CUDA or request.node.get_closest_marker("cuda") is None:
        yield None
        return
    from esper_lifetimes.emulate import emulate_cuda

    with emulate_cuda() as em:
        yield em


@pytest.fixture(
    params=["virtual", pytest.param("cuda", marks=pytest.mark.cuda)],
)
def B(request: Any, _cuda_emulation: Any) -> Any:  # noqa: N802 - the scenario texts call it B
    """The backend a scenario body runs on."""
    if request.param == "virtual":
        return VirtualBackend()
    b = CudaBackend()
    if _cuda_emulation is not None:
        b.live = True  # emulated streams are virtual: unsynchronized work is in flight
    return b


@pytest.fixture
def V() -> VirtualBackend:  # noqa: N802
    """The virtual backend only."""
    return VirtualBackend()


@pytest.fixture(autouse=True)
def _tracking_enabled() -> Any:
    """Every test starts with tracking enabled and no shared @checked state."""
    try:
        from esper_lifetimes import modes, tracking
    except ImportError:  # pragma: no cover - the engine is not built
        yield
        return
    modes.enable()
    tracking.reset_checked()
    yield
    modes.enable()
    tracking.reset_checked()


# ---------------------------------------------------------------------------------------
# Source-line tags

_TAG = re.compile(r"#\s*@([\w-]+)\s*$")
_tag_cache: dict[str, dict[int, str]] = {}


def _tags(path: str) -> dict[int, str]:
    tags = _tag_cache.get(path)
    if tags is None:
        tags = {}
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                m = _TAG.search(line)
                if m:
                    tags[i] = m.group(1)
        _tag_cache[path] = tags
    return tags


def tag_of(site: str | None) -> str | None:
    """The tag of the line a site names (``"file.py:12"``), or the site itself when the
    line has no tag; ``None`` for no site."""
    if site is None:
        return None
    path, _, line = site.rpartition(":")
    if not line.isdigit():
        return site
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    if not os.path.exists(full):
        return site
    return _tags(full).get(int(line), site)


def verdict(tracker: Any, severity: str = "error") -> list[tuple[str, str | None]]:
    """Sorted ``(kind, tag of the offending use)`` of the tracker's hazards."""
    return sorted((h.kind, tag_of(h.use_site)) for h in tracker.hazards if h.severity == severity)


# CI replays the same hypothesis examples on every run (a red CI must be reproducible);
# local runs explore new ones.
if os.environ.get("CI"):
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hyp_settings.load_profile("ci")
