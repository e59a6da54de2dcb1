"""Emulated CUDA on the CPU: unmodified ``torch.cuda`` code under the tracker, no GPU.

``with emulate_cuda():`` (or ``ESPER_LIFETIMES=full,emulate=cuda``, ``esper-lifetimes run
--emulate-cuda``, pytest's ``--lifetimes-emulate-cuda``) makes a CPU-only machine answer
as a machine with ``devices`` CUDA devices:

* CUDA tensors are CPU tensors that say they are CUDA. The storage of each one carries a
  tag (``untyped_storage()._esper_cuda``, the device index), visible through every view;
  a :class:`torch.overrides.TorchFunctionMode` answers ``device``, ``is_cuda``,
  ``get_device()``, ``is_pinned()`` and printing from it, and translates device
  arguments (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda", i)``, an int) to the CPU.
  A :class:`~torch.utils._python_dispatch.TorchDispatchMode`, kept at the bottom of the
  mode stack (below any tracker's), tags the fresh outputs of every op with a tagged
  input, so autograd's backward ops, optimizers and C++ code keep tensors on their device.
* ``.cuda()``, ``.to("cuda")``, ``.cpu()`` are real copies (never the same storage twice);
  ``pin_memory()`` returns a copy marked pinned (:func:`esper_lifetimes.virtual.is_host`).
* ``torch.cuda`` streams and events, ``torch.Stream``/``torch.Event`` and
  ``torch.accelerator`` are virtual streams and events (:mod:`esper_lifetimes.virtual`),
  one default stream per device, the current stream per thread and device.
* The memory model the trackers apply: an emulated CUDA storage is device memory on its
  device's current (virtual) stream; an untagged CPU tensor is host memory (pinned when
  marked so). ``track()``, ``@checked``, always-on and the pytest plugin find hazards in
  emulated code, in either nesting order.

What cannot be emulated raises :class:`EmulationError` naming the call (CUDA graphs,
``ExternalStream``, raw stream pointers, NCCL, ops that only have a CUDA kernel). Fidelity
limits: docs/EMULATION.md.
"""

from __future__ import annotations

import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from esper_lifetimes import patches, virtual
from esper_lifetimes.tracking import follow, memory

__all__ = ["emulate_cuda", "EmulationError", "is_emulating", "emulated_device"]

TAG = "_esper_cuda"
"""The attribute on an ``UntypedStorage`` that marks it as emulated CUDA memory."""

_Tensor = torch.Tensor
_SEQ = (list, tuple)
_CPU = -1  # pending targets (thread-local, set by the function mode for the dispatch mode)
_PINNED = -2


class EmulationError(RuntimeError):
    """A CUDA feature that :func:`emulate_cuda` cannot emulate on the CPU."""


def _unsupported(what: str, advice: str) -> Callable[..., Any]:
    def fail(*_a: Any, **_k: Any) -> Any:
        raise EmulationError(f"{what} cannot be emulated on the CPU by emulate_cuda(): {advice}")

    fail.__name__ = what.rsplit(".", 1)[-1].split("(")[0]
    return fail


def _unwrap(f: Any) -> Any:
    for _ in range(8):
        w = getattr(f, "__wrapped__", None)
        if w is None:
            return f
        f = w
    return f


# ---------------------------------------------------------------------------------------
# Tags and memory statistics


class _Stats:
    __slots__ = ("current", "peak", "allocated", "freed", "count", "allocs", "frees")

    def __init__(self) -> None:
        self.current = [0, 0, 0]  # all, small_pool, large_pool
        self.peak = [0, 0, 0]
        self.allocated = [0, 0, 0]
        self.freed = [0, 0, 0]
        self.count = [0, 0, 0]
        self.allocs = 0
        self.frees = 0


_SMALL = 1 << 20  # CUDA's caching allocator: blocks up to 1 MiB come from the small pool
_stats: dict[int, _Stats] = {}
_tag_refs: dict[int, Any] = {}
_stats_lock = threading.Lock()


class _TagRef(weakref.ref):  # type: ignore[type-arg]
    """A weakref to a tagged storage that carries what its free takes off the stats."""

    __slots__ = ("key", "stats", "n", "pool")
    key: int
    stats: _Stats
    n: int
    pool: int


def _untagged(ref: _TagRef) -> None:
    """The storage died: its bytes leave the device's statistics (never raises)."""
    _tag_refs.pop(ref.key, None)
    s = ref.stats
    n, pool = ref.n, ref.pool
    cur, fr, cnt = s.current, s.freed, s.count
    cur[0] -= n
    cur[pool] -= n
    fr[0] += n
    fr[pool] += n
    cnt[0] -= 1
    cnt[pool] -= 1
    s.frees += 1


def _tag_storage(st: Any, dev: int) -> None:
    try:
        setattr(st, TAG, dev)
    except Exception:  # noqa: S110 - a storage without __dict__ stays host memory
        return
    s = _stats.get(dev)
    if s is None:
        return
    n = st.nbytes()
    n = (n + 511) & ~511  # the allocator's 512-byte rounding
    ref = _TagRef(st, _untagged)
    ref.key = key = id(st)
    ref.stats = s
    ref.n = n
    ref.pool = pool = 1 if n <= _SMALL else 2
    _tag_refs[key] = ref
    # estimates: updated under the GIL, without a lock
    cur, peak = s.current, s.peak
    cur[0] += n
    cur[pool] += n
    s.allocated[0] += n
    s.allocated[pool] += n
    s.count[0] += 1
    s.count[pool] += 1
    if cur[0] > peak[0]:
        peak[0] = cur[0]
    if cur[pool] > peak[pool]:
        peak[pool] = cur[pool]
    s.allocs += 1


def _tag_of(t: Any) -> int | None:
    try:
        return getattr(t.untyped_storage(), TAG, None)
    except Exception:
        return None


def emulated_device(t: torch.Tensor) -> int | None:
    """The emulated CUDA device index of ``t``, or ``None`` for a CPU (host) tensor."""
    return _tag_of(t)


# ---------------------------------------------------------------------------------------
# Per-thread state: the current device and, per device, the current stream


class _Pending:
    """A thread's pending device: set while a factory call made for a CUDA device runs
    on the CPU (its outputs get that device's tag), ``_PINNED`` for a pinned one.

    One object per thread, held by the thread's dispatch mode: read through it, not
    through the ``threading.local`` (an attribute access there costs about 450
    instructions more, on every op)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: int | None = None


class _TL(threading.local):
    def __init__(self) -> None:
        self.cell = _Pending()
        self.device = 0
        self.streams: dict[int, Any] = {}  # device -> current stream (other than current)
        self.entered = False


_tl = _TL()
_state_lock = threading.RLock()
_em: _Emulation | None = None  # the running emulation (process-wide)


def is_emulating() -> bool:
    """Whether :func:`emulate_cuda` is active (in this process)."""
    return _em is not None


def _ndev() -> int:
    em = _em
    return em.devices if em is not None else 1


def _check_index(i: int) -> int:
    if i < 0 or i >= _ndev():
        raise RuntimeError(
            f"CUDA error: invalid device ordinal (device {i}; emulate_cuda(devices={_ndev()}))"
        )
    return i


def _index(device: Any, optional: bool = True) -> int:
    """A CUDA device index from ``device`` (``None``: the current device)."""
    if device is None:
        return _tl.device
    if isinstance(device, int):
        return _check_index(device) if device >= 0 else _tl.device
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {device}")
        return _tl.device if device.index is None else _check_index(device.index)
    idx = getattr(device, "device_index", None)  # a stream
    if isinstance(idx, int):
        return idx
    idx = getattr(device, "idx", None)  # torch.cuda.device(...)
    if isinstance(idx, int):
        return _check_index(idx)
    raise ValueError(f"Expected a cuda device, but got: {device!r}")


def _target(device: Any) -> int | None:
    """A device argument: a CUDA index, ``_CPU``, or ``None`` (another device: untouched)."""
    if isinstance(device, int) and not isinstance(device, bool):
        return _check_index(device)
    if isinstance(device, str):
        if device.startswith("cuda"):
            device = torch.device(device)
        elif device.startswith("cpu"):
            return _CPU
        else:
            return None
    if isinstance(device, torch.device):
        if device.type == "cuda":
            return _tl.device if device.index is None else _check_index(device.index)
        if device.type == "cpu":
            return _CPU
    return None


_CUDA_DEVS = [torch.device("cuda", i) for i in range(64)]
_CPU_DEV = torch.device("cpu")


# ---------------------------------------------------------------------------------------
# Streams and events


_stream_numbers = itertools.count(1)
_stream_dev: dict[int, int] = {}  # stream handle -> device index (absent: device 0)


class Stream(virtual.Stream):
    """``torch.cuda.Stream`` under emulation: a virtual stream on an emulated device."""

    __slots__ = ()  # the layout of virtual.Stream: the default stream is made one of these

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        if "stream_ptr" in kwargs or "stream_id" in kwargs:
            raise EmulationError(
                "torch.cuda.Stream(stream_id=...) names a real CUDA stream, which "
                "emulate_cuda() cannot emulate: create the stream with torch.cuda.Stream()"
            )
        if isinstance(device, str) and not device.startswith("cuda"):
            device = torch.device(device)
        if isinstance(device, torch.device) and device.type != "cuda":
            raise ValueError(f"emulate_cuda(): a stream on {device} is not a CUDA stream")
        d = _index(device)
        name = kwargs.get("name") or f"cuda:{d} stream {next(_stream_numbers)}"
        super().__init__(priority=priority, name=name)
        _stream_dev[self.handle] = d

    @property
    def device_index(self) -> int:
        return _stream_dev.get(self.handle, 0)

    def is_capturing(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return _CUDA_DEVS[self.device_index]

    @property
    def device_type(self) -> int:
        return 1  # DeviceType::CUDA

    @property
    def stream_id(self) -> int:
        return self.handle - virtual.DEFAULT_HANDLE

    @property
    def cuda_stream(self) -> int:
        raise EmulationError(
            "Stream.cuda_stream is a raw CUDA stream pointer, which emulate_cuda() cannot "
            "give: code that passes it to a custom kernel or library needs a real GPU"
        )

    def record_event(self, event: Any = None) -> Event:
        if event is None:
            event = Event()
        event.record(self)
        return event

    def __enter__(self) -> Stream:
        ctx = StreamContext(self)
        ctx.__enter__()
        virtual.ctx_stack().append(ctx)  # type: ignore[arg-type]
        return self

    def __repr__(self) -> str:
        return (
            f"<torch.cuda.Stream device=cuda:{self.device_index} cuda_stream=emulated "
            f"name={self.name!r}>"
        )


class Event(virtual.Event):
    """``torch.cuda.Event`` under emulation: a virtual event."""

    __slots__ = ("_time",)

    def __init__(
        self,
        enable_timing: bool = False,
        blocking: bool = False,
        interprocess: bool = False,
        external: bool = False,
        device: Any = None,
    ) -> None:
        if interprocess or external:
            raise EmulationError(
                "an interprocess or external torch.cuda.Event cannot be emulated by "
                "emulate_cuda(): share tensors between processes on a real GPU"
            )
        super().__init__(enable_timing, blocking, interprocess)
        self._time = 0.0

    def record(self, stream: Any = None) -> None:
        super().record(stream)
        import time

        self._time = time.perf_counter()

    def elapsed_time(self, end_event: Any) -> float:
        if not (self.enable_timing and getattr(end_event, "enable_timing", False)):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if not (self._recorded and end_event._recorded):
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return max(0.0, (end_event._time - self._time) * 1000.0)

    @property
    def device(self) -> torch.device:
        return _CUDA_DEVS[_tl.device]

    @property
    def cuda_event(self) -> int:
        raise EmulationError("Event.cuda_event is a raw CUDA pointer: emulate_cuda() has none")

    def ipc_handle(self) -> Any:
        raise EmulationError("Event.ipc_handle() cannot be emulated by emulate_cuda()")

    def __repr__(self) -> str:
        return f"<torch.cuda.Event emulated {self.handle:#x}>"


_defaults: dict[int, virtual.Stream] = {}


def default_stream(device: Any = None) -> virtual.Stream:
    return _defaults[_index(device)]


def _stream_of(dev: int) -> virtual.Stream:
    """The current stream of device ``dev`` on this thread."""
    if dev == _tl.device:
        return virtual.current_stream()
    s = _tl.streams.get(dev)
    return s if s is not None else _defaults[dev]


def current_stream(device: Any = None) -> virtual.Stream:
    return _stream_of(_index(device))


def set_device(device: Any) -> None:
    d = _index(device)
    tl = _tl
    if d == tl.device:
        return
    tl.streams[tl.device] = virtual.current_stream()
    s = tl.streams.pop(d, None)
    virtual.set_stream(s if s is not None else _defaults[d])
    tl.device = d


def current_device() -> int:
    return _tl.device


def set_stream(stream: Any) -> None:
    if stream is None:
        return
    if not isinstance(stream, virtual.Stream):
        raise TypeError(f"expected a torch.cuda.Stream, got {type(stream).__name__}")
    d = getattr(stream, "device_index", 0)
    set_device(d)
    virtual.set_stream(stream)


class StreamContext:
    """``torch.cuda.StreamContext`` / ``torch.cuda.stream(s)`` under emulation."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._saved: Any = None

    def __enter__(self) -> Any:
        s = self.stream
        if s is None:
            return None
        tl = _tl
        self._saved = (tl.device, virtual.state.cur.stream, dict(tl.streams))
        set_stream(s)
        return s

    def __exit__(self, *exc: Any) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        tl = _tl
        tl.device, virtual.state.cur.stream, tl.streams = saved[0], saved[1], saved[2]


def stream(stream: Any) -> StreamContext:
    return StreamContext(stream)


def synchronize(device: Any = None) -> None:
    virtual.synchronize()


def _sleep(cycles: int) -> None:
    """``torch.cuda._sleep``: work on the current stream that the host does not wait for."""
    virtual.current_stream()._pending = True


# ---------------------------------------------------------------------------------------
# Devices, properties, memory


class _DeviceProperties:
    def __init__(self, index: int, total_memory: int) -> None:
        self.name = "esper-lifetimes emulated CUDA device"
        self.major, self.minor = 9, 0
        self.total_memory = total_memory
        self.multi_processor_count = 132
        self.is_integrated = False
        self.is_multi_gpu_board = False
        self.max_threads_per_multi_processor = 2048
        self.warp_size = 32
        self.regs_per_multiprocessor = 65536
        self.L2_cache_size = 50 << 20
        self.gcnArchName = ""
        self.uuid = f"00000000-0000-0000-0000-{index:012d}"
        self.pci_bus_id = index
        self.pci_device_id = 0
        self.pci_domain_id = 0
        self.index = index

    def __repr__(self) -> str:
        return (
            f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor="
            f"{self.minor}, total_memory={self.total_memory // (1 << 20)}MB, "
            f"multi_processor_count={self.multi_processor_count}, emulated=True)"
        )


def memory_stats(device: Any = None) -> dict[str, int]:
    """CUDA's keys, estimated from the live emulated storages (512-byte rounding)."""
    s = _stats[_index(device)]
    out: dict[str, int] = {}
    with _stats_lock:
        for i, pool in enumerate(("all", "small_pool", "large_pool")):
            for metric in ("allocated_bytes", "active_bytes", "requested_bytes", "reserved_bytes"):
                out[f"{metric}.{pool}.current"] = s.current[i]
                out[f"{metric}.{pool}.peak"] = s.peak[i]
                out[f"{metric}.{pool}.allocated"] = s.allocated[i]
                out[f"{metric}.{pool}.freed"] = s.freed[i]
            for metric in ("allocation", "active", "segment"):
                out[f"{metric}.{pool}.current"] = s.count[i]
                out[f"{metric}.{pool}.peak"] = s.count[i]
                out[f"{metric}.{pool}.allocated"] = s.allocs
                out[f"{metric}.{pool}.freed"] = s.frees
            for metric in ("inactive_split", "inactive_split_bytes"):
                for k in ("current", "peak", "allocated", "freed"):
                    out[f"{metric}.{pool}.{k}"] = 0
    out.update(
        num_alloc_retries=0,
        num_ooms=0,
        num_sync_all_streams=0,
        num_device_alloc=s.allocs,
        num_device_free=s.frees,
        max_split_size=-1,
        **{"oversize_allocations.current": 0, "oversize_segments.current": 0},
    )
    return dict(sorted(out.items()))


def memory_allocated(device: Any = None) -> int:
    return _stats[_index(device)].current[0]


def max_memory_allocated(device: Any = None) -> int:
    return _stats[_index(device)].peak[0]


def reset_peak_memory_stats(device: Any = None) -> None:
    s = _stats[_index(device)]
    with _stats_lock:
        s.peak = list(s.current)


def mem_get_info(device: Any = None) -> tuple[int, int]:
    em = _em
    total = em.total_memory if em is not None else 0
    return (max(0, total - memory_allocated(device)), total)


def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
    s = memory_stats(device)
    return (
        f"emulated CUDA device {_index(device)}: allocated "
        f"{s['allocated_bytes.all.current']} bytes (peak {s['allocated_bytes.all.peak']})"
    )


# ---------------------------------------------------------------------------------------
# The function mode: device answers and device arguments


def _pending_call(target: int, func: Any, args: tuple, kwargs: dict) -> Any:
    cell = _tl.cell
    prev = cell.pending
    cell.pending = target
    try:
        return func(*args, **kwargs)
    finally:
        cell.pending = prev


def _h_device(func: Any, args: tuple, kwargs: dict) -> Any:
    d = _tag_of(args[0])
    return func(*args, **kwargs) if d is None else _CUDA_DEVS[d]


def _h_is_cuda(func: Any, args: tuple, kwargs: dict) -> Any:
    return _tag_of(args[0]) is not None or func(*args, **kwargs)


def _h_is_cpu(func: Any, args: tuple, kwargs: dict) -> Any:
    return _tag_of(args[0]) is None and func(*args, **kwargs)


def _h_get_device(func: Any, args: tuple, kwargs: dict) -> Any:
    d = _tag_of(args[0])
    return func(*args, **kwargs) if d is None else d


def _h_is_pinned(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    if _tag_of(t) is not None:
        return False
    try:
        return id(t.untyped_storage()) in virtual.host_storages
    except Exception:
        return False


def _h_pin_memory(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    if _tag_of(t) is not None:
        raise RuntimeError(
            "cannot pin 'torch.cuda.FloatTensor' only dense CPU tensors can be pinned"
        )
    if id(t.untyped_storage()) in virtual.host_storages:
        return t
    return _pending_call(_PINNED, _Tensor.clone, (t,), {"memory_format": torch.contiguous_format})


def _copy_to(t: torch.Tensor, target: int, dtype: Any, nb: bool, mf: Any) -> torch.Tensor:
    kw: dict[str, Any] = {"non_blocking": nb, "copy": True}
    if dtype is not None:
        kw["dtype"] = dtype
    if mf is not None:
        kw["memory_format"] = mf
    return _pending_call(target, _Tensor.to, (t, _CPU_DEV), kw)


def _h_to(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    rest = args[1:]
    other = rest[0] if rest and isinstance(rest[0], _Tensor) else kwargs.get("other")
    pk = kwargs
    if "copy" in kwargs:
        pk = {k: v for k, v in kwargs.items() if k != "copy"}
    try:
        dev, dtype, nb, mf = torch._C._nn._parse_to(*rest[:3], **pk)
    except Exception:
        return func(*args, **kwargs)
    if isinstance(other, _Tensor):
        od = _tag_of(other)
        tgt = od if od is not None else (_CPU if other.is_cpu else None)
    elif dev is None:
        return func(*args, **kwargs)  # a dtype or format change stays on the device
    else:
        tgt = _target(dev)
    if tgt is None:
        return func(*args, **kwargs)
    src = _tag_of(t)
    here = _CPU if src is None else src
    copy = bool(kwargs.get("copy", False)) or (len(rest) >= 4 and bool(rest[3]))
    if tgt == here and not copy:
        kw: dict[str, Any] = {"non_blocking": nb}
        if dtype is not None:
            kw["dtype"] = dtype
        if mf is not None:
            kw["memory_format"] = mf
        return _Tensor.to(t, **kw)
    if tgt == _CPU and src is None:
        return func(*args, **kwargs)
    return _copy_to(t, tgt, dtype, nb, mf)


def _h_cuda(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    device = args[1] if len(args) > 1 else kwargs.get("device")
    nb = bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    mf = kwargs.get("memory_format")
    tgt = _index(device)
    if _tag_of(t) == tgt:
        return t
    return _copy_to(t, tgt, None, nb, mf)


def _h_cpu(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    if _tag_of(t) is None:
        return func(*args, **kwargs)
    return _copy_to(t, _CPU, None, False, kwargs.get("memory_format"))


def _h_repr(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    if _tag_of(t) is None:
        return func(*args, **kwargs)
    mode = _fn_mode_for_thread()
    torch._C._push_on_torch_function_stack(mode)
    try:
        return torch._tensor_str._str(t, tensor_contents=kwargs.get("tensor_contents"))
    finally:
        _remove_mode(mode, dispatch=False)


def _h_type(func: Any, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    if _tag_of(t) is None or len(args) > 1 or kwargs:
        return func(*args, **kwargs)
    return func(*args, **kwargs).replace("torch.", "torch.cuda.", 1)


def _h_cai(func: Any, args: tuple, kwargs: dict) -> Any:
    if _tag_of(args[0]) is not None:
        raise EmulationError(
            "__cuda_array_interface__ hands a raw device pointer to another library, which "
            "emulate_cuda() cannot emulate: check that code path on a real GPU"
        )
    return func(*args, **kwargs)


_HANDLERS: dict[Any, Callable[[Any, tuple, dict], Any]] = {
    _Tensor.device.__get__: _h_device,
    _Tensor.is_cuda.__get__: _h_is_cuda,  # type: ignore[attr-defined]
    _Tensor.is_cpu.__get__: _h_is_cpu,  # type: ignore[attr-defined]
    _unwrap(_Tensor.get_device): _h_get_device,
    _unwrap(_Tensor.is_pinned): _h_is_pinned,
    _unwrap(_Tensor.pin_memory): _h_pin_memory,
    _unwrap(_Tensor.to): _h_to,
    _unwrap(_Tensor.cuda): _h_cuda,
    _unwrap(_Tensor.cpu): _h_cpu,
    _unwrap(_Tensor.__repr__): _h_repr,
    _unwrap(_Tensor.type): _h_type,
}
try:
    _HANDLERS[_Tensor.__cuda_array_interface__.__get__] = _h_cai  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover
    pass

_NO_HANDLER: set[Any] = set()


def _lookup_handler(func: Any) -> Any:
    """The handler of a function that a patch wraps (a tracker's ``Tensor.cpu``)."""
    try:
        h = _HANDLERS.get(_unwrap(func))
        if h is None:
            _NO_HANDLER.add(func)
        else:
            _HANDLERS[func] = h
    except TypeError:  # unhashable
        return None
    return h


_CONSTRUCTORS: set[Any] = set()


def _default_cuda() -> int | None:
    """The default device set by ``set_default_device("cuda")``, as an index."""
    ctx = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
    if ctx is None:
        return None
    dev = getattr(ctx, "device", None)
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return _tl.device if dev.index is None else dev.index
    return None


class _FnMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if kwargs is None:
            kwargs = {}
        h = _HANDLERS.get(func)
        if h is None and func not in _NO_HANDLER:
            h = _lookup_handler(func)
        if h is not None:
            return h(func, args, kwargs)
        if kwargs:
            dev = kwargs.get("device")
            pin = kwargs.get("pin_memory")
            if dev is not None or pin:
                tgt = _target(dev) if dev is not None else None
                if tgt is not None and tgt >= 0:
                    kwargs = dict(kwargs)
                    kwargs["device"] = _CPU_DEV
                    if pin:
                        raise RuntimeError("Only dense CPU tensors can be pinned")
                    return _pending_call(tgt, func, args, kwargs)
                if pin:
                    kwargs = dict(kwargs)
                    kwargs["pin_memory"] = False
                    return _pending_call(_PINNED, func, args, kwargs)
                return func(*args, **kwargs)
        if func in _CONSTRUCTORS:
            d = _default_cuda()
            if d is not None:
                kwargs = dict(kwargs)
                kwargs["device"] = _CPU_DEV
                return _pending_call(d, func, args, kwargs)
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# The dispatch mode: tags follow the data, devices must match

# Ops where a CPU tensor may meet a CUDA tensor on a real GPU.
_MIXED_OK = frozenset(
    {
        "aten::copy_",
        "aten::_to_copy",
        "aten::_copy_from",
        "aten::_copy_from_and_resize",
        "aten::copy",
        "aten::_foreach_copy_",
        "aten::index",
        "aten::index_put_",
        "aten::_index_put_impl_",
        "aten::index_put",
        "aten::set_",
        "aten::lift_fresh",
        "aten::lift",
        "aten::_pin_memory",
        "aten::is_pinned",
        "aten::record_stream",
        "aten::_local_scalar_dense",
        "aten::is_same_size",
        "aten::_has_same_storage_numel",
        "aten::detach",
        "aten::alias",
    }
)

# id(OpOverload) -> (name, allows mixed devices, returns a fresh storage, the op)
_OPS: dict[int, tuple[str, bool, bool, Any]] = {}


def _op_info(func: Any) -> tuple[str, bool, bool, Any]:
    info = _OPS.get(id(func))
    if info is None:
        try:
            schema = func._schema
            name = schema.name
            # ``copy_`` and the other in-place and view ops return an input: no new tag
            fresh = any(r.alias_info is None for r in schema.returns)
        except Exception:
            name = str(func)
            fresh = True
        info = (name, name in _MIXED_OK or not name.startswith("aten::"), fresh, func)
        _OPS[id(func)] = info
    return info


def _mismatch(a: int, b: int | None, name: str) -> RuntimeError:
    da = f"cuda:{a}"
    db = "cpu" if b is None else f"cuda:{b}"
    return RuntimeError(
        "Expected all tensors to be on the same device, but found at least two devices, "
        f"{da} and {db}! (when checking arguments for {name}; emulated CUDA: "
        "emulate_cuda(strict_devices=False) relaxes this check)"
    )


def _tag_outputs(out: Any, dev: int) -> None:
    if isinstance(out, _Tensor):
        try:
            st = out.untyped_storage()
        except Exception:
            return
        if getattr(st, TAG, None) is None and out.is_cpu:
            _tag_storage(st, dev)
    elif isinstance(out, _SEQ):
        for o in out:
            _tag_outputs(o, dev)


def _tag_copies(out: Any, dev: int, args: tuple) -> None:
    """An op that may return an input (``copy_``, ``contiguous`` under inference mode):
    tags only the outputs that are not an input's storage."""
    if isinstance(out, _Tensor):
        outs = [out]
    elif isinstance(out, _SEQ):
        outs = [o for o in out if isinstance(o, _Tensor)]
    else:
        return
    ins = set()
    for a in args:
        if isinstance(a, _Tensor):
            try:
                ins.add(id(a.untyped_storage()))
            except Exception:  # noqa: S110 - no storage: nothing it could alias
                pass
    for o in outs:
        try:
            st = o.untyped_storage()
        except Exception:
            continue
        if id(st) not in ins and getattr(st, TAG, None) is None and o.device.type == "cpu":
            _tag_storage(st, dev)


def _pin_outputs(out: Any) -> None:
    if isinstance(out, _Tensor):
        if out.device.type == "cpu" and _tag_of(out) is None:
            virtual.mark_host(out)
    elif isinstance(out, _SEQ):
        for o in out:
            _pin_outputs(o)


class _DispatchMode(TorchDispatchMode):
    supports_higher_order_operators = True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self, strict: bool) -> None:
        super().__init__()
        self.strict = strict
        # Modes are per thread (_enter_thread): this thread's cells, read on every op
        # without the threading.local lookups.
        self.cell = _tl.cell
        self.vcur = virtual.thread_stream()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, C901
        if kwargs is None:
            kwargs = {}
        cell = self.cell
        pending = cell.pending
        if pending is not None:
            cell.pending = None
            try:
                out = func(*args, **kwargs)
            finally:
                cell.pending = pending
            if pending >= 0:
                vs = self.vcur.stream
                (vs if vs is not None else virtual.DEFAULT)._pending = True
                _tag_outputs(out, pending)
            elif pending == _PINNED:
                _pin_outputs(out)
            elif kwargs.get("non_blocking") and args and _tag_of(args[0]) is not None:
                _pin_outputs(out)  # a non-blocking device-to-host copy lands in pinned memory
            return out
        dev: int | None = None
        host = False
        for a in args:
            if isinstance(a, _Tensor):
                d = _tag_of(a)
                if d is None:
                    if a.is_cpu and a.dim():
                        host = True
                elif dev is None:
                    dev = d
                elif d != dev and self.strict and not _op_info(func)[1]:
                    raise _mismatch(dev, d, _op_info(func)[0])
            elif isinstance(a, _SEQ):
                for x in a:
                    if isinstance(x, _Tensor):
                        d = _tag_of(x)
                        if d is None:
                            if x.is_cpu and x.dim():
                                host = True
                        elif dev is None:
                            dev = d
                        elif d != dev and self.strict and not _op_info(func)[1]:
                            raise _mismatch(dev, d, _op_info(func)[0])
        if kwargs and dev is None:
            for a in kwargs.values():
                if isinstance(a, _Tensor):
                    d = _tag_of(a)
                    if d is not None:
                        dev = d
                        break
        if dev is not None and host and self.strict:
            name, ok, _, _ = _op_info(func)
            if not ok:
                raise _mismatch(dev, None, name)
        try:
            out = func(*args, **kwargs)
        except NotImplementedError as exc:
            if dev is not None and "CPU" in str(exc):
                raise EmulationError(
                    f"{_op_info(func)[0]} has no CPU kernel: a custom CUDA (or Triton) "
                    "kernel cannot be emulated by emulate_cuda(); give it a CPU "
                    "implementation for CI, or check this code path on a real GPU"
                ) from exc
            raise
        if dev is not None:
            vs = self.vcur.stream
            (vs if vs is not None else virtual.DEFAULT)._pending = True  # work on the stream
            if out is not None:
                if _op_info(func)[2]:
                    _tag_outputs(out, dev)
                else:
                    _tag_copies(out, dev, args)
        return out


# ---------------------------------------------------------------------------------------
# Mode stacks: the dispatch mode sits at the bottom (below every tracker's)


def _remove_mode(mode: Any, dispatch: bool) -> bool:
    """Removes ``mode`` from this thread's stack, keeping the modes above it in order."""
    if dispatch:
        length, pop, push = (
            torch._C._len_torch_dispatch_stack,
            lambda: torch._C._pop_torch_dispatch_stack(None),
            torch._C._push_on_torch_dispatch_stack,
        )
    else:
        length, pop, push = (
            torch._C._len_torch_function_stack,
            torch._C._pop_torch_function_stack,
            torch._C._push_on_torch_function_stack,
        )
    above = []
    found = False
    while length() > 0:
        m = pop()
        if m is mode:
            found = True
            break
        above.append(m)
    for m in reversed(above):
        push(m)
    return found


def _push_bottom_dispatch(mode: Any) -> None:
    above = []
    while torch._C._len_torch_dispatch_stack() > 0:
        above.append(torch._C._pop_torch_dispatch_stack(None))
    torch._C._push_on_torch_dispatch_stack(mode)
    for m in reversed(above):
        torch._C._push_on_torch_dispatch_stack(m)


class _ThreadModes(threading.local):
    def __init__(self) -> None:
        self.fn: _FnMode | None = None
        self.disp: _DispatchMode | None = None
        self.depth = 0


_modes = _ThreadModes()


def _fn_mode_for_thread() -> _FnMode:
    m = _modes.fn
    return m if m is not None else _FnMode()


def _enter_thread(strict: bool) -> None:
    tm = _modes
    tm.depth += 1
    if tm.depth > 1:
        return
    tm.fn = _FnMode()
    tm.disp = _DispatchMode(strict)
    torch._C._push_on_torch_function_stack(tm.fn)
    _push_bottom_dispatch(tm.disp)


def _exit_thread() -> None:
    tm = _modes
    if tm.depth <= 0:
        return
    tm.depth -= 1
    if tm.depth:
        return
    if tm.fn is not None:
        _remove_mode(tm.fn, dispatch=False)
    if tm.disp is not None:
        _remove_mode(tm.disp, dispatch=True)
    tm.fn = tm.disp = None
    _tl.device = 0
    _tl.streams = {}


# ---------------------------------------------------------------------------------------
# Patches of the torch API (process-wide; inert outside emulation, restored exactly)


def _switch(orig: Any, emu: Callable[..., Any]) -> Callable[..., Any]:
    """``emu`` while emulating, ``orig`` otherwise (a wrapper left behind is inert)."""

    def switched(*args: Any, **kwargs: Any) -> Any:
        if _em is not None:
            return emu(*args, **kwargs)
        return orig(*args, **kwargs)

    switched.__name__ = getattr(orig, "__name__", getattr(emu, "__name__", "switched"))
    switched.__doc__ = getattr(orig, "__doc__", None)
    switched.__wrapped__ = orig  # type: ignore[attr-defined]
    switched._esper_emulated = emu  # type: ignore[attr-defined]
    return switched


class _DeviceCtx:
    """``torch.cuda.device(i)`` / ``torch.accelerator.device_index(i)``."""

    def __init__(self, device: Any) -> None:
        self.idx = -1 if device is None else _index(device)
        self.prev_idx = -1

    def __enter__(self) -> _DeviceCtx:
        self.prev_idx = _exchange_device(self.idx)
        return self

    def __exit__(self, *exc: Any) -> None:
        _exchange_device(self.prev_idx)


def _exchange_device(d: int) -> int:
    if d < 0:
        return -1
    prev = _tl.device
    set_device(d)
    return prev


class _GenMeta(type(torch._C.Generator)):  # type: ignore[misc]
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch._C.Generator)

    def __subclasscheck__(cls, sub: Any) -> bool:
        return issubclass(sub, torch._C.Generator)


class Generator(torch._C.Generator, metaclass=_GenMeta):
    """``torch.Generator(device="cuda")`` under emulation: a CPU generator that says it is
    on the emulated device (random draws come from the CPU's generator algorithm)."""

    def __new__(cls, device: Any = "cpu") -> Any:
        tgt = _target(device) if device is not None else _CPU
        g = torch._C.Generator.__new__(cls, "cpu" if tgt is not None else device)  # type: ignore[call-arg]
        g._emu_dev = tgt if tgt is not None and tgt >= 0 else None  # type: ignore[attr-defined]
        return g

    def __init__(self, device: Any = "cpu") -> None:
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        d = self.__dict__.get("_emu_dev")
        return _CPU_DEV if d is None else _CUDA_DEVS[d]


def _location_tag(orig: Callable[..., Any]) -> Callable[..., Any]:
    def tag(storage: Any) -> Any:
        st = getattr(storage, "_untyped_storage", storage)
        d = getattr(st, TAG, None)
        if d is not None:
            return f"cuda:{d}"
        return orig(storage)

    return tag


def _restore_location(orig: Callable[..., Any]) -> Callable[..., Any]:
    def restore(storage: Any, location: str) -> Any:
        if isinstance(location, str) and location.startswith("cuda"):
            d = torch.device(location).index
            d = _tl.device if d is None else _check_index(d)
            st = getattr(storage, "_untyped_storage", storage)
            _tag_storage(st, d)
            return storage
        return orig(storage, location)

    return restore


def _grouped(orig: Callable[..., Any]) -> Callable[..., Any]:
    def group(tensorlistlist: Any, with_indices: bool = False) -> Any:
        out = orig(tensorlistlist, with_indices)
        fixed: dict[Any, Any] = {}
        for (device, dtype), value in out.items():
            d = None
            for lst in value[0]:
                for t in lst:
                    if isinstance(t, _Tensor):
                        d = _tag_of(t)
                        break
                if d is not None or lst:
                    break
            key = (_CUDA_DEVS[d], dtype) if d is not None else (device, dtype)
            if key in fixed:  # host and device tensors of one dtype: keep both groups apart
                key = (device, dtype)
            fixed[key] = value
        return fixed

    return group


# DLPack: a capsule made from an emulated CUDA tensor names its device; the tensor made
# from it shares the memory and is on that device too.
_capsules: list[tuple[Any, int]] = []


def _to_dlpack(orig: Callable[..., Any]) -> Callable[..., Any]:
    def to_dlpack(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        cap = orig(tensor, *args, **kwargs)
        d = _tag_of(tensor)
        if d is not None:
            _capsules.append((cap, d))
            del _capsules[:-64]
        return cap

    return to_dlpack


def _from_dlpack(orig: Callable[..., Any]) -> Callable[..., Any]:
    def from_dlpack(ext: Any, *args: Any, **kwargs: Any) -> Any:
        d = _tag_of(ext) if isinstance(ext, _Tensor) else None
        if d is None:
            for i, (cap, dev) in enumerate(_capsules):
                if cap is ext:
                    d = dev
                    del _capsules[i]
                    break
        out = orig(ext, *args, **kwargs)
        if d is not None and isinstance(out, _Tensor):
            _tag_outputs(out, d)
        return out

    return from_dlpack


def _patch_specs(em: _Emulation) -> list[tuple[Any, str, Any]]:  # noqa: C901
    """(owner, name, emulated value). Callables become switches; classes are replaced."""
    import torch.backends.cudnn as cudnn
    import torch.serialization as ser

    c = torch.cuda
    specs: list[tuple[Any, str, Any]] = []

    def fn(owner: Any, name: str, emu: Any) -> None:
        if hasattr(owner, name) or owner is c:
            specs.append((owner, name, emu))

    props = [_DeviceProperties(i, em.total_memory) for i in range(em.devices)]
    graph_advice = "CUDA graphs capture real kernels; check graph capture on a real GPU"
    # devices
    fn(c, "is_available", lambda: True)
    fn(c, "device_count", lambda: em.devices)
    fn(c, "current_device", current_device)
    fn(c, "set_device", set_device)
    fn(c, "_lazy_init", lambda: None)
    fn(c, "init", lambda: None)
    fn(c, "_exchange_device", _exchange_device)
    fn(c, "_maybe_exchange_device", _exchange_device)
    fn(c, "get_device_name", lambda device=None: props[_index(device)].name)
    fn(c, "get_device_properties", lambda device=None: props[_index(device)])
    fn(c, "get_device_capability", lambda device=None: (9, 0))
    fn(c, "is_bf16_supported", lambda including_emulation=True: True)
    fn(c, "get_arch_list", lambda: ["sm_90"])
    fn(c, "is_current_stream_capturing", lambda: False)
    fn(c, "_sleep", _sleep)
    # streams and events
    fn(c, "current_stream", current_stream)
    fn(c, "default_stream", default_stream)
    fn(c, "set_stream", set_stream)
    fn(c, "synchronize", synchronize)
    fn(c, "stream", stream)
    specs.append((c, "Stream", Stream))
    specs.append((c, "Event", Event))
    specs.append((c, "StreamContext", StreamContext))
    specs.append(
        (
            c,
            "ExternalStream",
            _unsupported(
                "torch.cuda.ExternalStream",
                "it wraps a raw CUDA stream pointer; run this path on a real GPU",
            ),
        )
    )
    for name in ("graph", "CUDAGraph", "make_graphed_callables", "graph_pool_handle"):
        specs.append((c, name, _unsupported(f"torch.cuda.{name}", graph_advice)))
    specs.append(
        (
            c,
            "caching_allocator_alloc",
            _unsupported("torch.cuda.caching_allocator_alloc", "it returns a raw device pointer"),
        )
    )
    specs.append(
        (
            c,
            "current_blas_handle",
            _unsupported("torch.cuda.current_blas_handle", "it is a raw cuBLAS handle"),
        )
    )
    # memory
    fn(c, "memory_stats", memory_stats)
    fn(c, "memory_allocated", memory_allocated)
    fn(c, "max_memory_allocated", max_memory_allocated)
    fn(c, "memory_reserved", memory_allocated)
    fn(c, "max_memory_reserved", max_memory_allocated)
    fn(c, "reset_peak_memory_stats", reset_peak_memory_stats)
    fn(c, "reset_max_memory_allocated", reset_peak_memory_stats)
    fn(c, "empty_cache", lambda: None)
    fn(c, "mem_get_info", mem_get_info)
    fn(c, "memory_summary", memory_summary)
    # random numbers: the CPU generator stands for every device's
    fn(c, "manual_seed", lambda seed: torch.default_generator.manual_seed(int(seed)))
    fn(c, "manual_seed_all", lambda seed: torch.default_generator.manual_seed(int(seed)))
    fn(c, "seed", lambda: torch.default_generator.seed())
    fn(c, "seed_all", lambda: torch.default_generator.seed())
    fn(c, "initial_seed", lambda: torch.default_generator.initial_seed())
    fn(c, "get_rng_state", lambda device="cuda": torch.get_rng_state())
    fn(c, "set_rng_state", lambda new_state, device="cuda": torch.set_rng_state(new_state))
    fn(c, "get_rng_state_all", lambda: [torch.get_rng_state() for _ in range(em.devices)])
    fn(c, "set_rng_state_all", lambda states: torch.set_rng_state(states[0]))
    try:
        import torch.cuda.nccl as nccl

        for name in ("all_reduce", "reduce", "broadcast", "all_gather", "reduce_scatter"):
            specs.append(
                (
                    nccl,
                    name,
                    _unsupported(
                        f"torch.cuda.nccl.{name}",
                        "NCCL needs real GPUs; use the gloo backend in CPU CI",
                    ),
                )
            )
    except ImportError:  # pragma: no cover
        pass
    # optimizers and GradScaler group tensors by their device in C++, which sees the CPU
    fn(
        torch._C,
        "_group_tensors_by_device_and_dtype",
        _grouped(torch._C._group_tensors_by_device_and_dtype),
    )
    # cudnn: CPU kernels, not cuDNN's, run the ops
    fn(cudnn, "is_acceptable", lambda tensor: False)
    # the generic API
    specs.append((torch, "Stream", Stream))
    specs.append((torch, "Event", Event))
    specs.append((torch, "Generator", Generator))
    acc = getattr(torch, "accelerator", None)
    if acc is not None:
        cuda_dev = torch.device("cuda")
        fn(acc, "is_available", lambda: True)
        fn(acc, "current_accelerator", lambda check_available=False: cuda_dev)
        fn(acc, "device_count", lambda: em.devices)
        fn(acc, "current_device_index", current_device)
        fn(acc, "current_device_idx", current_device)
        fn(acc, "set_device_index", set_device)
        fn(acc, "set_device_idx", set_device)
        fn(acc, "current_stream", current_stream)
        fn(acc, "set_stream", set_stream)
        fn(acc, "synchronize", synchronize)
        fn(acc, "get_device_capability", lambda device=None: {"supported_dtypes": []})
        fn(acc, "memory_stats", memory_stats)
        fn(acc, "memory_allocated", memory_allocated)
        fn(acc, "max_memory_allocated", max_memory_allocated)
        fn(acc, "memory_reserved", memory_allocated)
        fn(acc, "max_memory_reserved", max_memory_allocated)
        fn(acc, "reset_peak_memory_stats", reset_peak_memory_stats)
        fn(acc, "empty_cache", lambda: None)
        fn(acc, "get_memory_info", mem_get_info)
        if hasattr(acc, "device_index"):
            specs.append((acc, "device_index", _DeviceCtx))
    import torch.utils.dlpack as dlpack

    for owner in (torch, dlpack):
        fn(owner, "to_dlpack", _to_dlpack(dlpack.to_dlpack))
        fn(owner, "from_dlpack", _from_dlpack(dlpack.from_dlpack))
    # torch.compile: the OptimizedModule as usual, run eagerly
    fn(torch, "compile", _make_compile(torch.compile))
    # threads started inside emulation enter it
    th = threading.Thread
    fn(th, "start", _make_start(th.start))
    fn(th, "_bootstrap_inner", _make_bootstrap(th._bootstrap_inner))  # type: ignore[attr-defined]
    # serialization: CUDA locations in, CUDA locations out
    specs.append((ser, "location_tag", _location_tag(ser.location_tag)))
    specs.append((ser, "default_restore_location", _restore_location(ser.default_restore_location)))
    return specs


def _install(em: _Emulation) -> patches.PatchSet:
    """Installs the emulation's patches (patches.PatchSet: restored exactly, also under a
    tracker's patches installed meanwhile)."""
    specs = []
    for owner, name, emu in _patch_specs(em):
        current = getattr(owner, name, None)
        if isinstance(emu, type) or current is None or not callable(current):
            value = emu  # a class, or something torch lacks: replaced while emulating
        else:
            value = _switch(current, emu)
        specs.append((owner, name, value))
    return patches.PatchSet().apply(specs)


# ---------------------------------------------------------------------------------------
# Threads, compile


def _make_bootstrap(orig: Callable[..., Any]) -> Callable[..., Any]:
    def _bootstrap_inner(self: threading.Thread) -> None:
        em = _em
        if em is None or not getattr(self, "_esper_emulated", False):
            return orig(self)
        _enter_thread(em.strict)  # a thread started inside emulation is emulated too
        try:
            return orig(self)
        finally:
            _exit_thread()

    return _bootstrap_inner


def _make_start(orig: Callable[..., Any]) -> Callable[..., Any]:
    def start(self: threading.Thread) -> None:
        if _em is not None and _modes.depth:
            self._esper_emulated = True  # type: ignore[attr-defined]
        return orig(self)

    return start


# ---------------------------------------------------------------------------------------
# The context manager


class _Emulation:
    def __init__(self, devices: int, strict: bool, total_memory: int) -> None:
        self.devices = devices
        self.strict = strict
        self.total_memory = total_memory
        self.count = 0
        self.patches: patches.PatchSet | None = None
        self.saved: dict[str, Any] = {}


class emulate_cuda:  # noqa: N801 - a context manager named like a function
    """Emulates ``devices`` CUDA devices on the CPU for the ``with`` block (this thread,
    and the threads it starts).

    ``strict_devices`` (default ``True``): an op where a CPU tensor meets an emulated
    CUDA tensor raises CUDA's device-mismatch error, as the real device would; ``False``
    lets it run (the CPU tensor is then read as host memory). ``total_memory``: what
    ``get_device_properties().total_memory`` and ``mem_get_info()`` report.

    Entered again while active (any thread), it joins the running emulation, which needs
    the same ``devices``. Everything patched is restored when the last one exits.
    """

    def __init__(
        self, devices: int = 1, *, strict_devices: bool = True, total_memory: int = 80 << 30
    ) -> None:
        if not isinstance(devices, int) or not 1 <= devices <= 64:
            raise ValueError(f"emulate_cuda(devices=...) takes 1 to 64, not {devices!r}")
        self.devices = devices
        self.strict_devices = bool(strict_devices)
        self.total_memory = int(total_memory)
        self._entered = 0

    def __enter__(self) -> emulate_cuda:
        global _em
        with _state_lock:
            em = _em
            if em is None:
                em = _Emulation(self.devices, self.strict_devices, self.total_memory)
                _start_emulation(em)
                _em = em
            elif em.devices != self.devices:
                raise ValueError(
                    f"emulate_cuda(devices={self.devices}) inside emulate_cuda("
                    f"devices={em.devices}): one emulation runs at a time"
                )
            em.count += 1
        try:
            _enter_thread(em.strict)
        except BaseException:
            self._leave()
            raise
        self._entered += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._entered <= 0:
            return
        self._entered -= 1
        _exit_thread()
        self._leave()

    def _leave(self) -> None:
        global _em
        with _state_lock:
            em = _em
            if em is None:
                return
            em.count -= 1
            if em.count == 0:
                _em = None
                _stop_emulation(em)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with emulate_cuda(
                self.devices, strict_devices=self.strict_devices, total_memory=self.total_memory
            ):
                return fn(*args, **kwargs)

        return wrapper

    def __repr__(self) -> str:
        return f"emulate_cuda(devices={self.devices})"


def _start_emulation(em: _Emulation) -> None:
    import torch.utils._device as tdev

    _CONSTRUCTORS.clear()
    _CONSTRUCTORS.update(tdev._device_constructors())
    _stats.clear()
    for i in range(em.devices):
        _stats[i] = _Stats()
    _defaults.clear()
    _defaults[0] = virtual.DEFAULT
    em.saved["default_name"] = virtual.DEFAULT.name
    virtual.DEFAULT.name = "cuda:0 default"
    for i in range(1, em.devices):
        s = Stream.__new__(Stream)
        virtual.Stream.__init__(s, name=f"cuda:{i} default")
        _stream_dev[s.handle] = i
        _defaults[i] = s
    virtual.DEFAULT.__class__ = Stream  # torch.cuda.default_stream() answers as a CUDA stream
    em.patches = _install(em)
    if sys.modules.get("torch._dynamo.eval_frame") is not None:
        _eager_stance(em)
    # else: dynamo is slow to import (seconds); the patched torch.compile sets the stance
    memory.set_emulating(True)


def _eager_stance(em: _Emulation) -> None:
    """Compiled code runs eagerly under emulation (its ops then pass the modes)."""
    if "stance" in em.saved:
        return
    try:
        import torch._dynamo.eval_frame as ef

        em.saved["stance"] = ef._stance
        torch.compiler.set_stance("force_eager")
        em.saved["our_stance"] = ef._stance
    except Exception:  # noqa: S110 - torch without dynamo: nothing to set
        pass


def _make_compile(orig: Callable[..., Any]) -> Callable[..., Any]:
    def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001 - torch.compile's name
        out = orig(*args, **kwargs)
        em = _em
        if em is not None:
            _eager_stance(em)
        return out

    return compile


def _stop_emulation(em: _Emulation) -> None:
    memory.set_emulating(False)
    if "stance" in em.saved:
        ours, prev = em.saved.get("our_stance"), em.saved["stance"]
        follow.replace_stance(ours, prev)  # a region entered inside emulation restores prev
        patches.restore_dynamo_stance(prev, only_if=ours)
    if em.patches is not None:
        em.patches.restore()
    em.patches = None
    virtual.DEFAULT.name = em.saved.get("default_name", "default")
    virtual.DEFAULT.__class__ = virtual.Stream
    _defaults.clear()


@contextmanager
def _suspended() -> Iterator[None]:
    """Runs the block with this thread's emulation modes off (internal use)."""
    tm = _modes
    if not tm.depth:
        yield
        return
    fn, disp = tm.fn, tm.disp
    _remove_mode(fn, dispatch=False)
    _remove_mode(disp, dispatch=True)
    try:
        yield
    finally:
        torch._C._push_on_torch_function_stack(fn)
        _push_bottom_dispatch(disp)
