"""``emulate_cuda()``: unmodified ``torch.cuda`` code on the CPU, checked by the tracker.

Every body below is CUDA code as a user writes it (``device="cuda"``, ``torch.cuda.Stream``,
``.cuda(non_blocking=True)``, ``record_stream``); only the ``with emulate_cuda()`` around it
is added. Hazards are asserted by kind and by the source line they name (``# @tag``).
"""

from __future__ import annotations

import io
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("esper_lifetimes.tracking")

import esper_lifetimes  # noqa: E402
from conftest import HAS_CUDA, tag_of  # noqa: E402
from esper_lifetimes import emulate, virtual  # noqa: E402
from esper_lifetimes.emulate import EmulationError, emulate_cuda  # noqa: E402

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="emulation is for machines without a GPU")

N = 1024


def kinds(t):
    return sorted((h.kind, tag_of(h.use_site)) for h in t.hazards if h.severity == "error")


# ---------------------------------------------------------------------------------------
# Devices


def test_devices_answer_as_cuda():
    before = torch.cuda.is_available()
    with emulate_cuda() as em:
        assert em.devices == 1
        assert torch.cuda.is_available() and torch.cuda.device_count() == 1
        assert torch.cuda.current_device() == 0
        assert "emulated" in torch.cuda.get_device_name()
        assert torch.cuda.get_device_properties(0).total_memory == 80 << 30
        x = torch.zeros(3, device="cuda")
        assert x.device == torch.device("cuda", 0) and x.is_cuda and not x.is_cpu
        assert x.get_device() == 0
        assert x.device.type == "cuda"
        assert repr(x) == "tensor([0., 0., 0.], device='cuda:0')"
        assert x.type() == "torch.cuda.FloatTensor"
        y = (x + 1) * 2
        assert y.device.type == "cuda"  # op outputs stay on the device
        h = torch.ones(3)
        assert h.device.type == "cpu" and repr(h) == "tensor([1., 1., 1.])"
        for spec in ("cuda", "cuda:0", torch.device("cuda", 0), torch.device("cuda"), 0):
            assert torch.empty(2, device=spec).is_cuda, spec
        assert torch.zeros_like(x).is_cuda and x.new_zeros(2).is_cuda
    assert torch.cuda.is_available() == before


def test_several_devices_each_with_its_own_default_stream():
    with emulate_cuda(devices=2):
        assert torch.cuda.device_count() == 2
        a = torch.ones(2, device="cuda:1")
        assert a.device == torch.device("cuda", 1) and a.get_device() == 1
        s0 = torch.cuda.default_stream(0)
        s1 = torch.cuda.default_stream(1)
        assert s0 is not s1
        assert torch.cuda.current_stream() is s0
        torch.cuda.set_device(1)
        assert torch.cuda.current_device() == 1
        assert torch.cuda.current_stream() is s1
        assert torch.empty(1, device="cuda").get_device() == 1
        with torch.cuda.device(0):
            assert torch.cuda.current_device() == 0
            assert torch.cuda.current_stream() is s0
        assert torch.cuda.current_device() == 1
        torch.cuda.set_device(0)
        b = torch.ones(2, device="cuda:0")
        with pytest.raises(RuntimeError, match="cuda:0 and cuda:1|cuda:1 and cuda:0"):
            _ = a + b
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.zeros(1, device="cuda:2")


def test_default_device_cuda():
    with emulate_cuda():
        torch.set_default_device("cuda")
        try:
            assert torch.zeros(2).is_cuda and torch.randn(2, 2).is_cuda
        finally:
            torch.set_default_device(None)
        with torch.device("cuda"):
            assert torch.ones(2).is_cuda
        assert not torch.ones(2).is_cuda


# ---------------------------------------------------------------------------------------
# Copies


def test_copies_are_real_copies():
    with emulate_cuda():
        h = torch.arange(6.0)
        d = h.cuda()
        d2 = h.to("cuda")
        d3 = h.to(torch.device("cuda"), non_blocking=True)
        for t in (d, d2, d3):
            assert t.is_cuda and torch.equal(t.cpu(), h)
            assert t.untyped_storage() is not h.untyped_storage()
        back = d.cpu()
        back2 = d.to("cpu")
        assert not back.is_cuda and back.untyped_storage() is not d.untyped_storage()
        assert back2.untyped_storage() is not d.untyped_storage()
        assert d.to("cuda") is d and d.cuda() is d  # already there: the same tensor
        assert h.to("cpu") is h
        dst = torch.empty(6, device="cuda")
        dst.copy_(h)
        assert dst.is_cuda and torch.equal(dst.cpu(), h)
        d[0] = 100.0
        assert h[0] == 0.0  # the host tensor was never shared


def test_pinned_memory():
    with emulate_cuda():
        h = torch.randn(4)
        assert not h.is_pinned()
        p = h.pin_memory()
        assert p.is_pinned() and torch.equal(p, h) and not p.is_cuda
        assert p.pin_memory() is p
        e = torch.empty(4, pin_memory=True)
        assert e.is_pinned()
        d = p.cuda(non_blocking=True)
        assert not d.is_pinned()
        back = d.to("cpu", non_blocking=True)  # lands in pinned memory, as on CUDA
        assert back.is_pinned()
        with pytest.raises(RuntimeError, match="dense CPU tensors can be pinned"):
            d.pin_memory()


def test_device_mismatch_raises_as_cuda_would_and_can_be_relaxed():
    with emulate_cuda():
        d = torch.ones(3, device="cuda")
        h = torch.ones(3)
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            _ = d + h
        assert (d + torch.tensor(2.0)).is_cuda  # a 0-dim CPU tensor is allowed, as on CUDA
        d.copy_(h)  # copies may cross devices
        assert d[torch.tensor([0, 1])].is_cuda  # CPU indices are allowed
    with emulate_cuda(strict_devices=False):
        d = torch.ones(3, device="cuda")
        assert (d + torch.ones(3)).is_cuda


# ---------------------------------------------------------------------------------------
# Restoring


def _api_snapshot():
    import torch.backends.cudnn as cudnn
    import torch.serialization as ser

    names = [
        (torch.cuda, n)
        for n in (
            "is_available",
            "device_count",
            "current_device",
            "set_device",
            "Stream",
            "Event",
            "stream",
            "StreamContext",
            "current_stream",
            "synchronize",
            "memory_stats",
            "_sleep",
            "ExternalStream",
            "graph",
        )
    ]
    names += [(torch, "Stream"), (torch, "Event"), (torch, "Generator"), (torch, "compile")]
    names += [(torch.accelerator, "current_stream"), (torch.accelerator, "is_available")]
    names += [(cudnn, "is_acceptable"), (ser, "location_tag")]
    names += [(ser, "default_restore_location"), (torch.Tensor, "record_stream")]
    names += [(threading.Thread, "start"), (threading.Thread, "_bootstrap_inner")]
    return {f"{o.__name__}.{n}": o.__dict__.get(n, "<missing>") for o, n in names}


@pytest.mark.parametrize("order", ["emulation-outside", "tracker-outside", "tracker-closes-first"])
def test_everything_is_restored_exactly(order):
    before = _api_snapshot()
    fn_stack = torch._C._len_torch_function_stack()
    disp_stack = torch._C._len_torch_dispatch_stack()
    if order == "emulation-outside":
        with emulate_cuda():
            with esper_lifetimes.track("collect"):
                torch.cuda.Stream().synchronize()
    elif order == "tracker-outside":
        with esper_lifetimes.track("collect"):
            with emulate_cuda():
                torch.cuda.Stream().synchronize()
    else:
        em = emulate_cuda()
        em.__enter__()
        tr = esper_lifetimes.track("collect")
        tr.__enter__()
        torch.cuda.synchronize()
        em.__exit__(None, None, None)  # the emulation ends while the tracker runs
        assert not torch.cuda.is_available() or HAS_CUDA
        tr.__exit__(None, None, None)
    assert _api_snapshot() == before
    assert torch._C._len_torch_function_stack() == fn_stack
    assert torch._C._len_torch_dispatch_stack() == disp_stack
    assert not emulate.is_emulating()
    assert virtual.DEFAULT.name == "default" and type(virtual.DEFAULT) is virtual.Stream


def test_nested_emulation_joins_and_needs_the_same_devices():
    with emulate_cuda():
        with emulate_cuda():
            assert torch.zeros(1, device="cuda").is_cuda
        assert torch.cuda.is_available()
        with pytest.raises(ValueError, match="one emulation runs at a time"):
            with emulate_cuda(devices=2):
                pass
    assert not emulate.is_emulating()


# ---------------------------------------------------------------------------------------
# Hazards in unmodified CUDA code


def _side_stream_step(record: bool):
    side = torch.cuda.Stream()
    host = torch.randn(N).pin_memory()
    with torch.cuda.stream(side):
        x = host.to("cuda", non_blocking=True)
        y = x * 2
    torch.cuda.current_stream().wait_stream(side)
    if record:
        y.record_stream(torch.cuda.current_stream())
    z = y + 1  # @use
    del x, y  # @free
    return z


@pytest.mark.parametrize("order", ["emulation-outside", "tracker-outside"])
@pytest.mark.parametrize("record", [False, True])
def test_missing_record_stream_is_found_in_either_nesting_order(order, record):
    if order == "emulation-outside":
        with emulate_cuda(), esper_lifetimes.track("collect") as t:
            _side_stream_step(record)
    else:
        with esper_lifetimes.track("collect") as t, emulate_cuda():
            _side_stream_step(record)
    if record:
        assert t.errors == [], t.report()
    else:
        assert kinds(t) == [("unsynced-free", "use")], t.report()
        (h,) = t.errors
        assert tag_of(h.free_site) == "free"
        assert h.alloc_stream_name.startswith("cuda:0 stream ")
        if order == "emulation-outside":  # a tracker started earlier named it "default"
            assert h.use_stream_name == "cuda:0 default"
    assert t.diagnostics == []


def test_a_prefetcher_gated_on_device_type_is_checked():
    class Prefetcher:
        """The usual CUDA prefetcher: the side-stream path runs only on CUDA."""

        def __init__(self, batches, device):
            self.batches = iter(batches)
            self.device = device
            self.stream = torch.cuda.Stream() if device.type == "cuda" else None
            self.next = None
            self.preload()

        def preload(self):
            b = next(self.batches, None)
            if b is None:
                self.next = None
                return
            if self.stream is None:
                self.next = b.to(self.device)
                return
            with torch.cuda.stream(self.stream):
                self.next = b.to(self.device, non_blocking=True)  # @copy

        def __next__(self):
            # the bug: no torch.cuda.current_stream().wait_stream(self.stream)
            b = self.next
            if b is None:
                raise StopIteration
            self.preload()
            return b

    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        batches = [torch.randn(N).pin_memory() for _ in range(3)]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pf = Prefetcher(batches, device)
        total = 0.0
        for b in iter(lambda: next(pf, None), None):
            total += float((b * 2).sum())  # @use
        assert pf.stream is not None  # the CUDA path ran
    assert ("unsynced-access", "use") in kinds(t), t.report()


def test_non_blocking_device_to_host_read_before_sync():
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        d = torch.randn(N, device="cuda")
        h = d.to("cpu", non_blocking=True)
        v = float(h.sum())  # @read
        del v
    hz = [x for x in t.errors if x.kind == "host-read-before-copy"]
    assert hz and tag_of(hz[0].other_site) == "read", t.report()


def test_non_blocking_device_to_host_after_event_sync_is_clean():
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        d = torch.randn(N, device="cuda")
        h = d.to("cpu", non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        ev.synchronize()
        assert float(h.sum()) == pytest.approx(float(d.sum().item()), rel=1e-5)
    assert t.errors == [], t.report()


def test_host_write_during_non_blocking_copy_from_pinned_memory():
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        side = torch.cuda.Stream()
        host = torch.randn(N).pin_memory()
        with torch.cuda.stream(side):
            d = host.cuda(non_blocking=True)  # @copy
        host.fill_(0.0)  # @write
        side.synchronize()
        del d
    hz = [x for x in t.errors if x.kind == "host-write-during-copy"]
    assert hz and tag_of(hz[0].other_site) == "write" and tag_of(hz[0].use_site) == "copy", (
        t.report()
    )


def test_pageable_non_blocking_copy_is_synchronous_for_the_source():
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        side = torch.cuda.Stream()
        host = torch.randn(N)  # pageable
        with torch.cuda.stream(side):
            d = host.cuda(non_blocking=True)
        host.fill_(0.0)  # safe: CUDA staged the pageable source before returning
        side.synchronize()
        del d
    assert t.errors == [], t.report()


def test_events_order_streams_and_a_missing_wait_is_a_race():
    def body(wait: bool):
        side = torch.cuda.Stream()
        done = torch.cuda.Event()
        with torch.cuda.stream(side):
            x = torch.randn(N, device="cuda")
            done.record()
        if wait:
            torch.cuda.current_stream().wait_event(done)
        return x, x * 2  # @use

    for wait in (True, False):
        with emulate_cuda(), esper_lifetimes.track("collect") as t:
            keep = body(wait)
        del keep
        if wait:
            assert t.errors == [], t.report()
        else:
            assert kinds(t) == [("unsynced-access", "use")], t.report()


def test_streams_events_and_the_generic_api():
    with emulate_cuda():
        s = torch.cuda.Stream(priority=-1)
        assert isinstance(s, torch.cuda.Stream) and s.device == torch.device("cuda", 0)
        assert s.query()
        with torch.cuda.stream(s):
            assert torch.cuda.current_stream() is s
            y = torch.randn(N, device="cuda") * 2
        assert torch.cuda.current_stream() is torch.cuda.default_stream()
        assert not s.query() and s.query()  # work in flight once, then the host polled
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        end.record()
        end.synchronize()
        assert start.elapsed_time(end) >= 0.0
        with pytest.raises(RuntimeError, match="enable_timing"):
            torch.cuda.Event().elapsed_time(torch.cuda.Event())
        torch.cuda.set_stream(s)
        assert torch.cuda.current_stream() is s
        torch.cuda.set_stream(torch.cuda.default_stream())
        g = torch.Stream(device="cuda")
        ev = torch.Event(device="cuda")
        ev.record(g)
        assert isinstance(g, torch.Stream) and g.wait_event(ev) is None
        assert torch.accelerator.is_available()
        assert torch.accelerator.current_accelerator().type == "cuda"
        assert torch.accelerator.current_stream() is torch.cuda.current_stream()
        torch.accelerator.synchronize()
        torch.cuda.synchronize()
        assert not torch.accelerator.current_stream().is_capturing()
        del y


def test_sleep_advances_the_stream_without_the_host_waiting():
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        side = torch.cuda.Stream()
        side.synchronize()
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000)
        assert not side.query()  # the sleep is still running
        assert side.query()
    assert t.errors == [] and t.diagnostics == []


def test_threads_started_inside_see_emulation():
    seen = []

    def worker():
        x = torch.zeros(2, device="cuda")
        seen.append((torch.cuda.is_available(), x.device.type, torch.cuda.current_device()))

    with emulate_cuda():
        th = threading.Thread(target=worker)
        th.start()
        th.join()
    assert seen == [(True, "cuda", 0)]


# ---------------------------------------------------------------------------------------
# Training code


def test_lstm_moves_to_cuda_and_trains():
    with emulate_cuda():
        import torch.backends.cudnn as cudnn

        assert cudnn.enabled
        m = torch.nn.LSTM(4, 8, num_layers=2).to("cuda")
        x = torch.randn(5, 2, 4, device="cuda")
        out, (h, c) = m(x)
        out.sum().backward()
        assert out.is_cuda and h.is_cuda and m.weight_ih_l0.grad.is_cuda


def test_memory_stats_use_cudas_keys():
    with emulate_cuda():
        base = torch.cuda.memory_stats()["active_bytes.all.current"]
        x = torch.empty(1 << 20, device="cuda")  # 4 MiB
        stats = torch.cuda.memory_stats()
        for key in (
            "active_bytes.all.current",
            "allocated_bytes.all.current",
            "allocated_bytes.all.peak",
            "reserved_bytes.all.current",
            "num_alloc_retries",
            "num_ooms",
        ):
            assert key in stats, key
        assert stats["active_bytes.all.current"] - base == 4 << 20
        assert torch.cuda.memory_allocated() - base == 4 << 20
        peak = torch.cuda.max_memory_allocated()
        del x
        assert torch.cuda.memory_allocated() == base
        assert torch.cuda.max_memory_allocated() == peak
        torch.cuda.reset_peak_memory_stats()
        assert torch.cuda.max_memory_allocated() == base
        free, total = torch.cuda.mem_get_info()
        assert total == 80 << 30 and free <= total


def test_compile_runs_the_module_eagerly_keeping_optimized_module():
    with emulate_cuda():
        m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).cuda()
        x = torch.randn(2, 4, device="cuda")
        want = m(x)
        for kw in ({}, {"backend": "eager"}):
            cm = torch.compile(m, **kw)
            assert type(cm).__name__ == "OptimizedModule" and cm._orig_mod is m
            out = cm(x)
            assert out.is_cuda and torch.equal(out, want)


def test_a_module_compiled_before_emulation_runs_under_it():
    m = torch.nn.Linear(4, 4)
    cm = torch.compile(m)
    with emulate_cuda():
        m.cuda()
        x = torch.randn(2, 4, device="cuda")
        assert torch.equal(cm(x), m(x)) and cm(x).is_cuda
    import torch._dynamo.eval_frame as ef

    assert ef._stance.stance == "default"


def test_autocast_answers_as_on_cuda():
    with emulate_cuda():
        assert not torch.is_autocast_enabled("cuda")
        with torch.autocast("cuda"):
            assert torch.is_autocast_enabled("cuda")
            assert torch.get_autocast_dtype("cuda") == torch.float16
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.get_autocast_dtype("cuda") == torch.bfloat16
        with torch.cuda.amp.autocast():
            assert torch.is_autocast_enabled("cuda")


@pytest.mark.parametrize("opt_kw", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_grad_scaler_and_optimizers_step_on_the_device(opt_kw):
    torch.manual_seed(0)
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        m = m.cuda()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, **opt_kw)
        scaler = torch.amp.GradScaler("cuda")
        w0 = m[0].weight.detach().clone()
        for _ in range(2):
            x = torch.randn(4, 8, device="cuda")
            with torch.autocast("cuda"):
                loss = m(x).square().mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        assert not torch.equal(m[0].weight.detach(), w0)  # the step ran
        st = opt.state[m[0].weight]
        assert st["exp_avg"].is_cuda
        # Adam's step counter is host memory unless the fused/capturable path puts it on
        # the device, as on a GPU
        assert st["step"].is_cuda == bool(opt_kw.get("fused"))
        assert scaler.get_scale() > 0
    assert t.errors == [], t.report()
    assert t.diagnostics == []


def test_checkpointing_backward_on_the_device():
    from torch.utils.checkpoint import checkpoint

    with emulate_cuda():
        m = torch.nn.Linear(4, 4).cuda()
        x = torch.randn(2, 4, device="cuda", requires_grad=True)
        checkpoint(m, x, use_reentrant=False).sum().backward()
        assert x.grad.is_cuda and m.weight.grad.is_cuda


def test_save_keeps_cuda_locations_and_load_maps_to_cuda():
    with emulate_cuda():
        d = torch.randn(3, device="cuda")
        h = torch.ones(2)
        buf = io.BytesIO()
        torch.save({"d": d, "h": h}, buf)
        buf.seek(0)
        got = torch.load(buf)
        assert got["d"].is_cuda and not got["h"].is_cuda and torch.equal(got["d"], d)
        buf.seek(0)
        mapped = torch.load(buf, map_location="cuda")
        assert mapped["h"].is_cuda
    # saved with CUDA locations: outside emulation, loading needs a map_location
    buf.seek(0)
    assert torch.load(buf, map_location="cpu")["d"].device.type == "cpu"


def test_generator_on_cuda():
    with emulate_cuda():
        g = torch.Generator(device="cuda")
        assert g.device == torch.device("cuda", 0) and isinstance(g, torch.Generator)
        g.manual_seed(3)
        a = torch.randn(4, device="cuda", generator=g)
        g.manual_seed(3)
        b = torch.randn(4, device="cuda", generator=g)
        assert a.is_cuda and torch.equal(a, b)
        assert isinstance(torch.default_generator, torch.Generator)


@pytest.mark.parametrize("workers", [0, 1])
def test_dataloader_pin_memory_feeding_a_side_stream(workers):
    ds = torch.utils.data.TensorDataset(torch.randn(16, N // 16))
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        loader = torch.utils.data.DataLoader(ds, batch_size=4, pin_memory=True, num_workers=workers)
        side = torch.cuda.Stream()
        total = torch.zeros((), device="cuda")
        for (b,) in loader:
            assert b.is_pinned()  # pinned by the loader (its pin thread with workers)
            with torch.cuda.stream(side):
                d = b.cuda(non_blocking=True)
            torch.cuda.current_stream().wait_stream(side)
            d.record_stream(torch.cuda.current_stream())
            total += d.sum()
        assert float(total) != 0.0
    assert t.errors == [], t.report()


# ---------------------------------------------------------------------------------------
# What cannot be emulated


def test_what_cannot_be_emulated_fails_clearly():
    with emulate_cuda():
        with pytest.raises(EmulationError, match="ExternalStream"):
            torch.cuda.ExternalStream(1234)
        with pytest.raises(EmulationError, match="CUDA graphs"):
            torch.cuda.CUDAGraph()
        with pytest.raises(EmulationError, match="CUDA graphs"):
            with torch.cuda.graph(None):
                pass
        with pytest.raises(EmulationError, match="raw CUDA stream pointer"):
            _ = torch.cuda.current_stream().cuda_stream
        with pytest.raises(EmulationError, match="NCCL"):
            torch.cuda.nccl.all_reduce([torch.ones(1, device="cuda")])
        with pytest.raises(EmulationError, match="raw device pointer"):
            _ = torch.ones(1, device="cuda").__cuda_array_interface__


def test_tracked_emulation_reports_cuda_stream_names():
    with emulate_cuda(), esper_lifetimes.track("collect") as t:
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            x = torch.randn(N, device="cuda")
        y = x * 2  # @use
        del y
    (h,) = t.errors
    assert h.kind == "unsynced-access" and tag_of(h.use_site) == "use"
    assert h.use_stream_name == "cuda:0 default"
    assert h.other_stream_name.startswith("cuda:0 stream ")


# ---------------------------------------------------------------------------------------
# @checked and always-on under emulation


def _leak_on_side_stream():
    side = torch.cuda.Stream()
    x = torch.randn(N, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x * 2  # @use
    del x  # @free
    return y


@pytest.mark.parametrize("order", ["emulation-outside", "checked-first"])
def test_checked_finds_the_hazard_under_emulation(order):
    step = esper_lifetimes.checked(_leak_on_side_stream)
    if order == "checked-first":
        esper_lifetimes.checked_tracker()  # the shared tracker exists before emulation
    with emulate_cuda():
        with pytest.raises(esper_lifetimes.LifetimeHazardError) as ei:
            step()
            esper_lifetimes.flush_checked()
    (h,) = ei.value.hazards
    assert h.kind == "unsynced-free" and tag_of(h.use_site) == "use"
    assert tag_of(h.free_site) == "free"


@pytest.mark.parametrize("order", ["emulation-outside", "always-on-first"])
def test_always_on_finds_the_hazard_under_emulation(order):
    from esper_lifetimes import modes

    if order == "always-on-first":
        run = modes.enable(mode="always-on", sample=1.0)
        em = emulate_cuda()
        em.__enter__()
    else:
        em = emulate_cuda()
        em.__enter__()
        run = modes.enable(mode="always-on", sample=1.0)
    try:
        torch.cuda.synchronize()  # a barrier: the window opens here
        keep = _leak_on_side_stream()
        nxt = torch.zeros(N, device="cuda")  # the next allocation on the default stream
        del keep, nxt
    finally:
        modes.disable()
        em.__exit__(None, None, None)
    kinds = [(h.kind, tag_of(h.use_site)) for h in run.hazards if h.severity == "error"]
    assert ("unsynced-free", "use") in kinds, run.report()
    assert not emulate.is_emulating() and not torch.cuda.is_available()


def test_generic_stream_api_races_are_found():
    def body(wait: bool):
        s = torch.Stream(device="cuda")
        with torch.cuda.stream(s):
            x = torch.randn(N, device="cuda")  # @write
            ev = torch.Event(device="cuda")
            ev.record(s)
        if wait:
            torch.accelerator.current_stream().wait_event(ev)
        return x, x + 1  # @use

    for wait in (False, True):
        with emulate_cuda(), esper_lifetimes.track("collect") as t:
            keep = body(wait)
        del keep
        if wait:
            assert t.errors == [], t.report()
        else:
            assert kinds(t) == [("unsynced-access", "use")], t.report()
            assert tag_of(t.errors[0].other_site) == "write"


def test_each_device_has_its_own_default_stream_in_reports():
    with emulate_cuda(devices=2), esper_lifetimes.track("collect") as t:
        torch.cuda.set_device(1)
        x = torch.randn(N, device="cuda:1")  # @write
        torch.cuda.set_device(0)
        with torch.cuda.device(1):
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                y = x * 2  # @use
        del y
    (h,) = t.errors
    assert h.kind == "unsynced-access" and tag_of(h.use_site) == "use"
    assert h.other_stream_name == "cuda:1 default"
    assert h.use_stream_name.startswith("cuda:1 stream ")
