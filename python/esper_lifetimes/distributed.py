"""Collectives in the model: ``torch.distributed`` calls on the streams they run on.

While a tracker is active, the Python surface of ``torch.distributed`` is patched (with
the rest of :mod:`esper_lifetimes.patches`): the collectives of ``distributed_c10d``
(``all_reduce``, ``all_gather_into_tensor``, ``reduce_scatter_tensor``, ``broadcast``,
``all_to_all_single``, the list forms, ``reduce``, ``isend``/``irecv``/``send``/``recv``,
``batch_isend_irecv``), the functional collectives of
``torch.distributed._functional_collectives`` with ``wait_tensor``, and ``Work.wait``,
``Work.synchronize``, ``Work.is_completed``, ``Work.get_future`` (and ``wait``/``value`` of
the future it returns). Each call is modelled as ProcessGroupNCCL runs it
(docs/SEMANTICS.md, "Collectives"):

* ``async_op=False``: the collective reads its inputs and writes its outputs on the
  current stream;
* ``async_op=True`` (and ``isend``/``irecv``, ``batch_isend_irecv``, the functional
  collectives): on the group's internal stream for the device, after that stream waits
  on the current stream. ``Work.wait()`` makes the stream current at the call wait on the
  collective; so do ``synchronize()`` and the future's ``wait()``/``value()``;
  ``is_completed()`` answering True is the host seeing the collective complete.
* the group holds the tensors until the work is waited on (here: the model keeps a
  reference), so nothing is freed under a pending collective, and no ``record_stream``
  is involved.

The internal stream of a group on a device is named ``nccl:group0:dev0`` (the backend,
the group's name, the device: ``cpu`` for CPU tensors on virtual streams). In the engine
it is one stream per collective kind, each kind's first work ordered after the previous
collective of the group, so that the kinds together are one serial stream; their names
say the collective and the rank: ``nccl:group0:dev0 all_reduce (rank 1)``. Point-to-point
operations run on their own internal stream, ``...:p2p``.

What this module cannot see is counted: collectives that C++ issues without passing
through Python (DDP's reducer, ``ProcessGroup`` methods called directly) reach the
tracker's dispatch mode as ``c10d`` ops. They are modelled on the current stream (their
stream and their wait are not visible) and counted in :func:`unseen`.
"""

from __future__ import annotations

import inspect
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from esper_lifetimes import patches
from esper_lifetimes.tracking import memory, plans

if TYPE_CHECKING:
    from esper_lifetimes.tracking import Tracker

__all__ = [
    "patch_table",
    "unseen",
    "seen",
    "pending",
    "rank_info",
    "rank_report_dir",
    "run_meta",
    "internal_stream_name",
]

_Tensor = torch.Tensor

# Engine handles of the internal streams and of the events recorded after collectives:
# a range no other stream or event uses (virtual streams live at 1 << 61, CUDA at 1 << 62).
_STREAM_BASE = 1 << 60
_EVENT_BASE = (1 << 60) | (1 << 44)
_stream_ids = itertools.count(1)
_event_ids = itertools.count(1)
_lock = threading.RLock()
# (chain key, collective name) -> (engine handle, stream name, virtual)
_streams: dict[tuple[str, str], tuple[int, str, bool]] = {}


def rank_info() -> tuple[int, int] | None:
    """(rank, world size) of this process: from ``torch.distributed`` when initialized,
    else from torchrun's ``RANK``/``WORLD_SIZE``; ``None`` outside a distributed run."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:
        pass
    r, w = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if r is not None and w is not None and r.isdigit() and w.isdigit():
        return int(r), int(w)
    return None


def rank_report_dir(path: str) -> str:
    """``path/rank<R>`` under a distributed run (each rank writes its own report), else
    ``path``."""
    from esper_lifetimes import merge

    info = rank_info()
    return path if info is None else merge.rank_dir(path, info[0])


def run_meta(tr: Tracker) -> dict[str, Any]:
    """What a rank's report says about the distributed run: rank, world size, the
    collectives modelled, those that ran unseen, async ones never waited on. Empty
    outside a distributed run."""
    info = rank_info()
    if info is None:
        return {}
    return {
        "rank": info[0],
        "world_size": info[1],
        "collectives": seen(tr),
        "unseen": unseen(tr),
        "never_waited": pending(tr),
    }


# ---------------------------------------------------------------------------------------
# Per-tracker state


class _State:
    __slots__ = ("named", "last", "unseen", "pending", "seen", "__weakref__")

    def __init__(self) -> None:
        self.named: set[int] = set()  # internal streams defined in this tracker's engine
        self.last: dict[str, int] = {}  # chain key -> stream of its latest collective
        self.unseen: dict[str, int] = {}  # "what (where)" -> count
        self.pending = 0  # async collectives issued and not waited on
        self.seen: dict[str, int] = {}  # collective -> calls modelled


# tracker -> what this module keeps for it (gone with the tracker)
_states: weakref.WeakKeyDictionary[Tracker, _State] = weakref.WeakKeyDictionary()


def _state(tr: Tracker) -> _State:
    st = _states.get(tr)
    if st is None:
        st = _State()
        _states[tr] = st
    return st


def unseen(tr: Tracker) -> dict[str, int]:
    """Collectives tracker ``tr`` saw only as opaque ``c10d`` ops (issued from C++):
    ``{"c10d::allreduce_ at file:line": count}`` (also in ``Tracker.unseen`` and the
    tracker's report)."""
    st = _states.get(tr)
    return dict(st.unseen) if st is not None else {}


def seen(tr: Tracker) -> dict[str, int]:
    """Collectives tracker ``tr`` modelled, by name: ``{"all_reduce": 3, ...}``."""
    st = _states.get(tr)
    return dict(st.seen) if st is not None else {}


def pending(tr: Tracker) -> int:
    """Async collectives tracked by ``tr`` that were never waited on (so far)."""
    st = _states.get(tr)
    return st.pending if st is not None else 0


# ---------------------------------------------------------------------------------------
# Streams


def _group_label(group: Any) -> str:
    try:
        import torch.distributed as dist

        if group is None:
            group = dist.group.WORLD
        name = str(group.group_name)
    except Exception:
        return "group?"
    return f"group{name}" if name.isdigit() else name


def _backend(group: Any) -> str:
    try:
        import torch.distributed as dist

        b = str(dist.get_backend(group))
    except Exception:
        return "c10d"
    if ":" in b:  # "cpu:gloo,cuda:nccl"
        parts = dict(p.split(":", 1) for p in b.split(",") if ":" in p)
        return parts.get("cuda", next(iter(parts.values()), b))
    return b


def _device_of(t: torch.Tensor) -> tuple[bool, int, str]:
    """(real CUDA memory, device index, label) of ``t``'s storage."""
    st = t.untyped_storage()
    dev = st.device  # a storage's device is never translated by CUDA emulation
    if dev.type == "cuda":
        return True, dev.index or 0, f"dev{dev.index or 0}"
    tag = getattr(st, "_esper_cuda", None)
    if tag is not None:
        return False, int(tag), f"dev{int(tag)}"
    return False, -1, "cpu"


def internal_stream_name(backend: str, group: str, device: str) -> str:
    """``nccl:group0:dev0``: the internal stream of a group on a device."""
    return f"{backend}:{group}:{device}"


def _rank_text() -> str:
    info = rank_info()
    return f" (rank {info[0]})" if info is not None else ""


def _stream(tr: Tracker, chain: str, coll: str, virtual: bool) -> int:
    key = (chain, coll)
    with _lock:
        rec = _streams.get(key)
        if rec is None:
            rec = (_STREAM_BASE | next(_stream_ids), f"{chain} {coll}{_rank_text()}", virtual)
            _streams[key] = rec
    h, name, virt = rec
    st = _state(tr)
    if h not in st.named:
        st.named.add(h)
        tr.engine.define_stream(h, name, virt)
    return h


def _current(tr: Tracker, cuda: bool, dev: int) -> int:
    if cuda:
        h = memory.cuda_current(dev)
        tr.name_cuda_stream(h)
        return h
    vs = memory.vstate.cur.stream
    if vs is None:
        vs = memory.VDEFAULT
    vs._pending = True  # work is enqueued on the virtual stream
    return vs.handle


# ---------------------------------------------------------------------------------------
# Accesses


def _access(tr: Tracker, t: Any, write: bool, site: Any, h: int) -> None:
    """One access of ``t``'s bytes on stream ``h`` (a CPU tensor standing for device
    memory, or a CUDA tensor)."""
    if not isinstance(t, _Tensor):
        return
    if t.__class__ is not _Tensor and hasattr(t, "elem"):
        t = t.elem  # AsyncCollectiveTensor
    tr.touch_on(t, write, site, h)


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, _Tensor):
        return [x]
    if isinstance(x, list | tuple):
        out: list[torch.Tensor] = []
        for y in x:
            out.extend(_tensors(y))
        return out
    return []


class _Coll:
    """One collective issued with a Work: its name, the tensors the group holds until it
    is waited on, and per tracker the event recorded after it on the internal stream."""

    __slots__ = ("name", "tensors", "events", "cuda", "dev")

    def __init__(self, name: str, tensors: list[torch.Tensor], cuda: bool, dev: int) -> None:
        self.name = name
        self.tensors = tensors
        self.events: list[tuple[Any, int]] = []
        self.cuda = cuda
        self.dev = dev


def _issue(
    tr: Tracker,
    coll: _Coll | None,
    name: str,
    reads: list[torch.Tensor],
    writes: list[torch.Tensor],
    group: Any,
    async_op: bool,
    site: Any,
    p2p: bool = False,
    fresh: list[torch.Tensor] | None = None,
) -> None:
    """Feeds one collective to tracker ``tr``."""
    first = (reads or writes or fresh or [None])[0]
    if first is None:
        return
    cuda, dev, label = _device_of(first)
    cur = _current(tr, cuda, dev)
    st = _state(tr)
    st.seen[name] = st.seen.get(name, 0) + 1
    for t in fresh or ():
        # allocated by the collective on the current stream (functional collectives)
        try:
            tr.register_fresh(t, site, None if cuda else cur)
        except Exception as exc:
            tr.note(exc, f"{name}: output")
    if not async_op:
        for t in reads:
            _access(tr, t, False, site, cur)
        for t in writes:
            _access(tr, t, True, site, cur)
        return
    chain = internal_stream_name(_backend(group), _group_label(group), label)
    if p2p:
        chain += ":p2p"
    eng = tr.engine
    h = _stream(tr, chain, name, not cuda)
    eng.stream_wait(h, cur)
    prev = st.last.get(chain)
    if prev is not None and prev != h:
        eng.stream_wait(h, prev)  # the kinds of one group are one serial stream
    st.last[chain] = h
    for t in reads:
        _access(tr, t, False, site, h)
    for t in writes:
        _access(tr, t, True, site, h)
    if coll is not None:
        ev = _EVENT_BASE | next(_event_ids)
        eng.event_record(ev, h)
        coll.events.append((tr, ev))
        st.pending += 1


# ---------------------------------------------------------------------------------------
# Works, futures and functional-collective outputs pending a wait

# id(object) -> (object, collectives). The object is held (its id cannot be reused) until
# it is waited on; so are the collectives' tensors, as the process group holds them.
_works: dict[int, tuple[Any, list[_Coll]]] = {}
_futures: dict[int, tuple[Any, list[_Coll]]] = {}
_outputs: dict[int, tuple[Any, _Coll]] = {}  # id(storage) of a functional output


_MAX_PENDING = 4096


def _purge() -> None:
    """Forgets works whose every tracker has closed, and the oldest beyond
    ``_MAX_PENDING`` (bounded memory for programs that never wait on their works)."""
    for table in (_works, _futures):
        while len(table) >= _MAX_PENDING:
            del table[next(iter(table))]
        dead = [
            k
            for k, (_o, cs) in table.items()
            if all(not tr.watching for c in cs for tr, _e in c.events)
        ]
        for k in dead:
            del table[k]
    dead = [k for k, (_o, c) in _outputs.items() if all(not tr.watching for tr, _e in c.events)]
    for k in dead:
        del _outputs[k]


def _waited(colls: list[_Coll], how: str) -> None:
    """``how``: "wait" (the current stream waits on each collective), "done" (the host saw
    it complete), "busy" (the host saw it still running)."""
    for c in colls:
        for tr, ev in c.events:
            if not tr.watching:
                continue
            try:
                eng = tr.engine
                if how == "wait":
                    eng.event_wait(ev, _current(tr, c.cuda, c.dev))
                else:
                    eng.event_query(ev, how == "done")
                if how != "busy":
                    eng.forget_event(ev)
                    st = _state(tr)
                    st.pending = max(0, st.pending - 1)
            except Exception as exc:
                tr.note(exc, f"{c.name}: wait")
        if how != "busy":
            c.events = []
            c.tensors = []


def _feeding() -> list[Any] | None:
    """The trackers an event on this thread feeds, or None (none, or inside a call)."""
    st = patches.thread_state
    if not st.active or st.depth:
        return None
    return patches.targets(st.active)


class _Inside:
    """While the original collective runs: no patched call feeds, and the trackers'
    dispatch modes pass the ``c10d`` ops it dispatches through (this module models
    them)."""

    __slots__ = ("modes",)

    def __enter__(self) -> None:
        st = patches.thread_state
        st.depth += 1
        self.modes = [m for m in st.modes if m is not None]
        for m in self.modes:
            m.suspended += 1

    def __exit__(self, *exc: Any) -> None:
        for m in self.modes:
            m.suspended -= 1
        patches.thread_state.depth -= 1


def _after(trackers: list[Any], model: Callable[[Any], None], what: str) -> None:
    st = patches.thread_state
    st.depth += 1
    try:
        for tr in tuple(trackers):
            if tr.engine is None or not tr.watching:
                continue
            try:
                model(tr)
            except Exception as exc:
                tr.note(exc, what)
    finally:
        st.depth -= 1
    for tr in tuple(trackers):
        tr.safe_point()


def _site(tr: Tracker) -> Any:
    return tr.site_here(2)


# ---------------------------------------------------------------------------------------
# torch.distributed collectives

# name -> (read arguments, written arguments, always async, point-to-point)
_SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool, bool]] = {
    "all_reduce": (("tensor",), ("tensor",), False, False),
    "all_reduce_coalesced": (("tensors",), ("tensors",), False, False),
    "broadcast": (("tensor",), ("tensor",), False, False),  # refined per rank below
    "reduce": (("tensor",), ("tensor",), False, False),
    "all_gather_into_tensor": (("input_tensor",), ("output_tensor",), False, False),
    "all_gather_single": (("input_tensor",), ("output_tensor",), False, False),
    "_all_gather_base": (("input_tensor",), ("output_tensor",), False, False),
    "reduce_scatter_tensor": (("input",), ("output",), False, False),
    "reduce_scatter_single": (("input",), ("output",), False, False),
    "_reduce_scatter_base": (("input",), ("output",), False, False),
    "all_to_all_single": (("input",), ("output",), False, False),
    "all_gather": (("tensor",), ("tensor_list",), False, False),
    "all_gather_coalesced": (("input_tensor_list",), ("output_tensor_lists",), False, False),
    "reduce_scatter": (("input_list",), ("output",), False, False),
    "all_to_all": (("input_tensor_list",), ("output_tensor_list",), False, False),
    "isend": (("tensor",), (), True, True),
    "irecv": ((), ("tensor",), True, True),
    "send": (("tensor",), (), False, True),
    "recv": ((), ("tensor",), False, True),
}


def _in_coalescing(group: Any) -> bool:
    try:
        from torch.distributed import distributed_c10d as c10d

        g = group if group is not None else c10d._get_default_group()
        return g in c10d._world.pg_coalesce_state
    except Exception:
        return False


def _is_root(args: Any, group: Any, key: str, group_key: str) -> bool:
    import torch.distributed as dist

    root = args.get(key)
    if root is not None:
        return dist.get_rank() == root
    groot = args.get(group_key)
    if groot is not None:
        return dist.get_rank(group) == groot
    return False


def _in_comm_hook() -> bool:
    """Whether the call comes from a DDP communication hook (a caller frame holds the
    ``GradBucket`` the reducer passed it). The reducer waits on the hook's future in C++,
    on whatever thread completes it: that wait is never seen."""
    try:
        bucket_type = torch._C._distributed_c10d.GradBucket
        f: Any = sys._getframe(2)
    except Exception:  # pragma: no cover
        return False
    for _ in range(32):
        if f is None:
            return False
        for v in f.f_locals.values():
            if isinstance(v, bucket_type):
                return True
        f = f.f_back
    return False


def _make_collective(name: str, orig: Callable[..., Any]) -> Callable[..., Any]:
    reads_at, writes_at, always_async, p2p = _SPECS[name]
    try:
        sig = inspect.signature(orig)
    except (TypeError, ValueError):  # pragma: no cover
        sig = None

    def collective(*args: Any, **kwargs: Any) -> Any:
        trackers = _feeding()
        if trackers is None or sig is None:
            return orig(*args, **kwargs)
        try:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            group = a.get("group")
            async_op = always_async or bool(a.get("async_op", False))
            reads = [t for n in reads_at for t in _tensors(a.get(n))]
            writes = [t for n in writes_at for t in _tensors(a.get(n))]
            if name == "broadcast":
                if _is_root(a, group, "src", "group_src"):
                    writes = []
                else:
                    reads = []
            elif name == "reduce":
                if not _is_root(a, group, "dst", "group_dst"):
                    writes = []
            coalescing = _in_coalescing(group)
            hooked = async_op and _in_comm_hook()
            sites = [(tr, _site(tr)) for tr in trackers]
        except Exception:
            return orig(*args, **kwargs)
        with _Inside():
            result = orig(*args, **kwargs)
        if coalescing:

            def note(tr: Tracker) -> None:
                key = f"{name} in a coalescing manager (not modelled)"
                st = _state(tr)
                st.unseen[key] = st.unseen.get(key, 0) + 1

            _after(trackers, note, name)
            return result
        work = result if async_op and _is_work(result) else None
        if async_op and work is None:
            return result  # not a member of the group, or the backend synced itself
        if hooked:
            # modelled on the current stream (as if waited at once), its wait counted unseen
            async_op = False
            work = None

            def note_hook(tr: Tracker) -> None:
                where = _site_text(tr, site_of.get(id(tr)))
                key = f"{name} in a DDP communication hook, waited on in C++"
                key = f"{key} at {where}" if where else key
                st = _state(tr)
                st.unseen[key] = st.unseen.get(key, 0) + 1

            site_of = dict((id(tr), s) for tr, s in sites)
            _after(trackers, note_hook, name)
        first = (reads or writes or [None])[0]
        coll = None
        if work is not None and first is not None:
            try:
                cuda, dev, _label = _device_of(first)
            except Exception:  # a tensor without storage: not modelled
                return result
            coll = _Coll(name, reads + writes, cuda, dev)
        site_of = dict((id(tr), s) for tr, s in sites)

        def model(tr: Tracker) -> None:
            _issue(tr, coll, name, reads, writes, group, async_op, site_of.get(id(tr)), p2p)

        _after(trackers, model, name)
        if coll is not None and coll.events:
            with _lock:
                _purge()
                _works[id(work)] = (work, [coll])
        return result

    collective.__name__ = getattr(orig, "__name__", name)
    collective.__qualname__ = getattr(orig, "__qualname__", name)
    collective.__doc__ = getattr(orig, "__doc__", None)
    collective.__wrapped__ = orig  # type: ignore[attr-defined]
    return collective


def _is_work(x: Any) -> bool:
    try:
        from torch.distributed import Work

        return isinstance(x, Work)
    except Exception:  # pragma: no cover
        return False


def _make_batch(orig: Callable[..., Any]) -> Callable[..., Any]:
    def batch_isend_irecv(p2p_op_list: Any) -> Any:
        trackers = _feeding()
        if trackers is None:
            return orig(p2p_op_list)
        try:
            from torch.distributed import distributed_c10d as c10d

            ops = []
            for op in p2p_op_list:
                fn = getattr(op.op, "__wrapped__", op.op)
                send = fn is getattr(c10d.isend, "__wrapped__", c10d.isend)
                ops.append(("isend" if send else "irecv", op.tensor, op.group, send))
            sites = {id(tr): _site(tr) for tr in trackers}
        except Exception:
            return orig(p2p_op_list)
        with _Inside():
            works = orig(p2p_op_list)
        colls: list[_Coll] = []
        try:
            for kind, t, _g, _send in ops:
                cuda, dev, _label = _device_of(t)
                colls.append(_Coll(f"batch_isend_irecv {kind}", [t], cuda, dev))
        except Exception:  # a tensor without storage: not modelled
            return works

        def model(tr: Tracker) -> None:
            for (kind, t, g, send), c in zip(ops, colls, strict=True):
                r, w = ([t], []) if send else ([], [t])
                _issue(tr, c, f"batch_isend_irecv {kind}", r, w, g, True, sites[id(tr)], True)

        _after(trackers, model, "batch_isend_irecv")
        works_l = list(works or ())
        with _lock:
            _purge()
            if len(works_l) == len(colls):
                for wk, c in zip(works_l, colls, strict=True):
                    _works[id(wk)] = (wk, [c])
            else:  # one work for the coalesced batch
                for wk in works_l:
                    _works[id(wk)] = (wk, list(colls))
        return works

    batch_isend_irecv.__wrapped__ = orig  # type: ignore[attr-defined]
    batch_isend_irecv.__doc__ = orig.__doc__
    return batch_isend_irecv


# ---------------------------------------------------------------------------------------
# Work and Future


def _take(table: dict[int, tuple[Any, list[_Coll]]], obj: Any, keep: bool) -> list[_Coll]:
    with _lock:
        rec = table.get(id(obj)) if keep else table.pop(id(obj), None)
    if rec is None or rec[0] is not obj:
        return []
    return rec[1]


def _make_work_wait(orig: Callable[..., Any], how: str) -> Callable[..., Any]:
    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        trackers = _feeding()
        if trackers is None:
            return orig(self, *args, **kwargs)
        st = patches.thread_state
        st.depth += 1
        try:
            result = orig(self, *args, **kwargs)
        finally:
            st.depth -= 1
        colls = _take(_works, self, keep=False)
        if colls:
            _waited(colls, how)
            for tr in tuple(trackers):
                tr.safe_point()
        return result

    wait.__wrapped__ = orig  # type: ignore[attr-defined]
    wait.__doc__ = getattr(orig, "__doc__", None)
    return wait


def _make_is_completed(orig: Callable[..., Any]) -> Callable[..., Any]:
    def is_completed(self: Any) -> Any:
        result = orig(self)
        if _feeding() is None:
            return result
        colls = _take(_works, self, keep=not result)
        if colls:
            _waited(colls, "done" if result else "busy")
        return result

    is_completed.__wrapped__ = orig  # type: ignore[attr-defined]
    is_completed.__doc__ = getattr(orig, "__doc__", None)
    return is_completed


def _make_get_future(orig: Callable[..., Any]) -> Callable[..., Any]:
    def get_future(self: Any) -> Any:
        fut = orig(self)
        if _feeding() is None:
            return fut
        colls = _take(_works, self, keep=True)
        if colls:
            with _lock:
                _futures[id(fut)] = (fut, colls)
        return fut

    get_future.__wrapped__ = orig  # type: ignore[attr-defined]
    get_future.__doc__ = getattr(orig, "__doc__", None)
    return get_future


def _make_future_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        trackers = _feeding()
        if trackers is None or not _futures:
            return orig(self, *args, **kwargs)
        st = patches.thread_state
        st.depth += 1
        try:
            result = orig(self, *args, **kwargs)
        finally:
            st.depth -= 1
        colls = _take(_futures, self, keep=False)
        if colls:
            with _lock:
                for k, (_w, cs) in list(_works.items()):
                    if cs is colls or any(c in colls for c in cs):
                        del _works[k]
            _waited(colls, "wait")
            for tr in tuple(trackers):
                tr.safe_point()
        return result

    wait.__wrapped__ = orig  # type: ignore[attr-defined]
    wait.__doc__ = getattr(orig, "__doc__", None)
    return wait


# ---------------------------------------------------------------------------------------
# Functional collectives

# the functional collectives patched (their outputs are fresh storages)
_FUNCTIONAL = ("all_reduce", "all_gather_tensor", "reduce_scatter_tensor", "all_to_all_single")


def _group_of(g: Any) -> Any:
    try:
        from torch.distributed import ProcessGroup

        if isinstance(g, ProcessGroup):
            return g
        from torch.distributed.device_mesh import DeviceMesh

        if isinstance(g, DeviceMesh):
            return g.get_group()
        if isinstance(g, tuple) and len(g) == 2 and isinstance(g[0], DeviceMesh):
            return g[0].get_group(g[1])
    except Exception:
        pass
    return None


def _unwrap_out(x: Any) -> Any:
    if isinstance(x, _Tensor) and x.__class__ is not _Tensor and hasattr(x, "elem"):
        return x.elem, True
    return x, False


def _make_functional(name: str, orig: Callable[..., Any]) -> Callable[..., Any]:
    try:
        sig = inspect.signature(orig)
    except (TypeError, ValueError):  # pragma: no cover
        sig = None

    def functional(*args: Any, **kwargs: Any) -> Any:
        trackers = _feeding()
        if trackers is None or sig is None or torch.compiler.is_compiling():
            return orig(*args, **kwargs)
        try:
            a = sig.bind(*args, **kwargs).arguments
            src = a.get("self")
            group = _group_of(a.get("group"))
            sites = {id(tr): _site(tr) for tr in trackers}
        except Exception:
            return orig(*args, **kwargs)
        with _Inside():
            result = orig(*args, **kwargs)
        if not isinstance(src, _Tensor) or not isinstance(result, _Tensor):
            return result
        try:
            out, pending_wait = _unwrap_out(result)
            cuda, dev, _label = _device_of(src)
        except Exception:  # a tensor without storage: not modelled
            return result
        coll = _Coll(f"functional {name}", [src, out], cuda, dev) if pending_wait else None

        def model(tr: Tracker) -> None:
            # waited inside already (a gather_dim other than 0): ordered as a sync call
            _issue(
                tr,
                coll,
                f"functional {name}",
                [src],
                [out],
                group,
                coll is not None,
                sites[id(tr)],
                False,
                [out],
            )

        _after(trackers, model, name)
        if coll is not None and coll.events:
            with _lock:
                _purge()
                _outputs[id(out.untyped_storage())] = (out, coll)
        return result

    functional.__wrapped__ = orig  # type: ignore[attr-defined]
    functional.__doc__ = getattr(orig, "__doc__", None)
    functional.__name__ = name
    return functional


def _fc_waited(t: Any) -> None:
    if not _outputs or not isinstance(t, _Tensor):
        return
    t, _ = _unwrap_out(t)
    try:
        key = id(t.untyped_storage())
    except Exception:
        return
    with _lock:
        rec = _outputs.pop(key, None)
    if rec is not None:
        _waited([rec[1]], "wait")


def _make_wait_tensor(orig: Callable[..., Any]) -> Callable[..., Any]:
    def wait_tensor(tensor: Any) -> Any:
        trackers = _feeding()
        if trackers is None:
            return orig(tensor)
        with _Inside():
            result = orig(tensor)
        _fc_waited(tensor)
        for tr in tuple(trackers):
            tr.safe_point()
        return result

    wait_tensor.__wrapped__ = orig  # type: ignore[attr-defined]
    wait_tensor.__doc__ = orig.__doc__
    return wait_tensor


# ---------------------------------------------------------------------------------------
# c10d ops that reach a tracker's dispatch mode: issued from C++ (DDP's reducer), or a
# ProcessGroup method called directly. Their stream and wait are not visible.

_C10D_CODE = 1001
_NO_DATA = frozenset({"c10d::barrier", "c10d::monitored_barrier_"})
_WRITES = frozenset(
    {"tensors", "output_tensors", "output_tensor", "output", "outputs", "output_lists"}
)


def _site_text(tr: Tracker, site: Any) -> str:
    return tr.site_text(site) if site is not None else ""


def _on_c10d_op(
    tr: Tracker, plan: Any, args: tuple, kwargs: dict, out: Any, site: Any, vh: Any
) -> None:
    name = plan.name
    if name == "_c10d_functional::wait_tensor":
        a = args[0] if args else kwargs.get("tensor")
        _fc_waited(a)
        return
    if name in _NO_DATA:
        return  # a barrier: no tensor of the program's
    where = _site_text(tr, site)
    key = f"{name} at {where}" if where else name  # as Tracker.unseen spells its keys
    st = _state(tr)
    st.unseen[key] = st.unseen.get(key, 0) + 1
    # modelled on the current stream: as the op would run had its wait followed at once
    n = len(args)
    for i, pname, _w in plan.pos:
        a = args[i] if i < n else kwargs.get(pname)
        for t in _tensors(a):
            tr.touch(t, False, site, vh)
            if pname in _WRITES:
                tr.touch(t, True, site, vh)


_c10d_registered = False  # the c10d op names are in plans.SPECIAL (once per process)


def _register_c10d_names() -> None:
    """The c10d and functional-collective ops get the collectives' plan. Once per
    process: listing every registered op costs about 6 ms and filtering it 2 ms more, and
    the patches are installed at every first region of a thread (every ``@checked`` call
    outside a region). libtorch registers these ops when it loads."""
    global _c10d_registered
    if _c10d_registered:
        return
    import torch.distributed  # noqa: F401 - registers the c10d ops

    try:
        names = torch._C._dispatch_get_all_op_names()
    except Exception:  # pragma: no cover
        return  # not marked done: the next install tries again
    plans.register_special(
        _C10D_CODE,
        _on_c10d_op,
        (n for n in names if n.startswith(("c10d::", "_c10d_functional::"))),
    )
    _c10d_registered = True


# ---------------------------------------------------------------------------------------
# The patch table (installed with the rest by patches.install)


# id(original) -> (original, wrapper): ``torch.distributed.isend`` and
# ``distributed_c10d.isend`` must stay one object (``P2POp`` checks ``op in (isend, ...)``)
_made: dict[int, tuple[Any, Any]] = {}


def _once(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def factory(orig: Any) -> Any:
        rec = _made.get(id(orig))
        if rec is None or rec[0] is not orig:
            rec = (orig, make(orig))
            _made[id(orig)] = rec
        return rec[1]

    return factory


def table_key() -> tuple[Any, ...]:
    """What :func:`patch_table`'s rows depend on that can change between installs: which
    collectives ``torch.distributed`` re-exports unchanged (a test or library may have
    replaced one there) and whether the functional collectives are loaded. The same key,
    the same rows."""
    try:
        import torch.distributed as dist

        if not dist.is_available():
            return ()
        from torch.distributed import distributed_c10d as c10d
    except Exception:  # pragma: no cover
        return ()
    _register_c10d_names()  # before any install uses the rows, cached or not
    same = tuple(getattr(dist, n, None) is getattr(c10d, n, None) for n in _SPECS)
    fc = sys.modules.get("torch.distributed._functional_collectives")
    return (same, fc is not None)


def patch_table() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """(owner, attribute, factory) rows for :mod:`esper_lifetimes.patches`; empty when
    ``torch.distributed`` is not available."""
    try:
        import torch.distributed as dist

        if not dist.is_available():
            return []
        from torch.distributed import distributed_c10d as c10d
    except Exception:  # pragma: no cover
        return []
    _register_c10d_names()
    rows: list[tuple[Any, str, Callable[[Any], Any]]] = []
    for name in _SPECS:
        if not hasattr(c10d, name):
            continue
        for owner in (c10d, dist):
            if getattr(owner, name, None) is getattr(c10d, name):
                rows.append((owner, name, _once(lambda o, n=name: _make_collective(n, o))))
    for owner in (c10d, dist):
        if hasattr(owner, "batch_isend_irecv"):
            rows.append((owner, "batch_isend_irecv", _once(_make_batch)))
    work = torch._C._distributed_c10d.Work
    rows += [
        (work, "wait", lambda o: _make_work_wait(o, "wait")),
        (work, "synchronize", lambda o: _make_work_wait(o, "wait")),
        (work, "is_completed", _make_is_completed),
        (work, "get_future", _make_get_future),
        (torch._C.Future, "wait", _make_future_wait),
        (torch._C.Future, "value", _make_future_wait),
    ]
    fc = sys.modules.get("torch.distributed._functional_collectives")
    if fc is None:
        try:
            import torch.distributed._functional_collectives as fc
        except Exception:  # pragma: no cover
            fc = None
    if fc is not None:
        for name in _FUNCTIONAL:
            if hasattr(fc, name):
                rows.append((fc, name, lambda o, n=name: _make_functional(n, o)))
        rows.append((fc, "wait_tensor", _make_wait_tensor))
    return rows
