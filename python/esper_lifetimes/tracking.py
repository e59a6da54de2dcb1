"""Automatic tracking of real torch code: ``track()``, ``@checked``, the dispatch mode.

One :class:`Tracker` owns one engine. While it is active on a thread:

* a ``TorchDispatchMode`` sees every aten op. Per op: one plan (cached per
  ``OpOverload``, built from the schema) says which arguments are read, which are
  written (``Tensor(a!)``), which are view inputs that touch no bytes (``Tensor(a)``)
  and which returns are fresh storages. Each tensor becomes one engine call over the
  bytes its view spans within its storage (storage offset, sizes, strides).
* a storage is registered the first time it is seen: as a fresh output, with the
  stream current at its creation as allocation stream and the op's site; as an input
  that the tracker never saw created (it existed before tracking began, or torch built it
  without dispatching, as ``torch.from_numpy`` does), lazily, on the *default* stream
  with no site ("allocated before tracking").
* its free is seen by a ``weakref`` callback on ``tensor.untyped_storage()`` (the same
  Python object for every view, alive exactly as long as the storage), and by the
  patched ``UntypedStorage.resize_``. The callback never raises: hazards it finds are
  reported at the next safe point.
* stream, event and host-blocking calls are patched (:mod:`esper_lifetimes.patches`).

Which memory is which. A CUDA tensor is device memory on its device's current stream.
A CPU tensor is *host* memory when it is pinned (``pin_memory()``, ``pin_memory=True``,
the output of a non-blocking device-to-host copy, or :func:`virtual.pin_memory`);
otherwise, with ``cpu="device"`` (the default when no GPU is present), it stands for
device memory on the current *virtual* stream, and with ``cpu="host"`` (the default with
a GPU) it is host memory that only copies and host reads care about.

Raising is deferred to safe points: after each op, in patched calls, on exit (and at the
entry and exit of ``@checked`` calls). Internal failures (the engine rejecting an event
the tracker built from something torch did that it did not foresee) never reach the
user's program: they are counted in :attr:`Tracker.diagnostics`.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esper_lifetimes import Engine, Hazard, InvalidArgumentError, LifetimesError, patches, virtual
from esper_lifetimes import autocast as _autocast
from esper_lifetimes.fixes import fix_for as _fix_for  # names the real tensor and stream
from esper_lifetimes.reports.text import format_report  # the one text renderer, compact
from esper_lifetimes.sites import SiteMark as _SiteMark
from esper_lifetimes.sites import SiteTable, format_site, user_frame
from esper_lifetimes.sites import _user as _user_codes

__all__ = [
    "Tracker",
    "track",
    "checked",
    "checked_tracker",
    "reset_checked",
    "flush_checked",
    "enable",
    "disable",
    "is_enabled",
    "LifetimeHazardError",
    "LifetimeHazardWarning",
    "format_report",
]

F = TypeVar("F", bound=Callable[..., Any])

_Tensor = torch.Tensor
_SEQ = (list, tuple)  # not `list | tuple`: that builds a UnionType per isinstance call

# ---------------------------------------------------------------------------------------
# Policy, errors, switch


class LifetimeHazardError(RuntimeError):
    """An error-severity hazard found under ``on_hazard="raise"``.

    The message is the report; :attr:`hazards` holds the :class:`Hazard` objects.
    """

    def __init__(self, message: str, hazards: list[Hazard]):
        super().__init__(message)
        self.hazards = hazards

    def __reduce__(self) -> tuple[Any, tuple[str, list[Hazard]]]:
        # pickles whole (a multiprocessing worker's error reaches the parent with its
        # hazards; Hazard pickles as its fields)
        return (type(self), (str(self), list(self.hazards)))


class LifetimeHazardWarning(RuntimeWarning):
    """An error-severity hazard found under ``on_hazard="warn"``."""


COLLECT, WARN, RAISE = 0, 1, 2
_POLICIES = {"collect": COLLECT, "warn": WARN, "raise": RAISE}


class ConfigError(InvalidArgumentError, ValueError):
    """A bad value given to :func:`esper_lifetimes.enable`, :func:`track`,
    :func:`checked` (or :class:`AlwaysOnTracker`): the message names it. A
    :class:`esper_lifetimes.LifetimesError` (and a ``ValueError``)."""


def _policy(on_hazard: str) -> int:
    try:
        return _POLICIES[on_hazard]
    except (KeyError, TypeError):
        raise ConfigError(
            f"on_hazard must be 'raise', 'warn' or 'collect', not {on_hazard!r}"
        ) from None


class _Config:
    __slots__ = ("enabled",)

    def __init__(self) -> None:
        # ESPER_LIFETIMES: one parser (config.py); off, or a value not understood, is off
        from esper_lifetimes import config

        self.enabled = config.enabled_by_env()


_config = _Config()


def enable() -> None:
    """Turns tracking on (the default unless ``ESPER_LIFETIMES=off``)."""
    _config.enabled = True


def disable() -> None:
    """Turns tracking off: ``@checked`` calls the function directly and ``track()`` yields
    a tracker that records nothing."""
    _config.enabled = False


def is_enabled() -> bool:
    return _config.enabled


# ---------------------------------------------------------------------------------------
# Op plans

_GENERIC, _SKIP, _LIFT, _SCALAR, _COPY_, _TO_COPY, _PIN, _RESIZE, _MAYBE, _UNSEEN = range(10)

# Ops that touch no bytes although their schema says they read a tensor (or that
# esper_lifetimes itself calls while a tracker's mode is active).
_SKIP_OPS = frozenset(
    {
        "aten::is_pinned",
        "aten::_unsafe_view",
        "aten::record_stream",
        "aten::set_",
        "aten::is_same_size",
        "aten::_has_same_storage_numel",
        "aten::is_set_to",
        "aten::sym_size",
        "aten::sym_stride",
        "aten::sym_numel",
        "aten::sym_storage_offset",
        "aten::size",
        "aten::stride",
        "aten::dim",
        "aten::numel",
        "aten::is_contiguous",
        "aten::is_non_overlapping_and_dense",
        "aten::is_strides_like_format",
        "aten::_version",
        "aten::detach_",
        "aten::_nested_tensor_size",
        "aten::_nested_tensor_strides",
        "aten::_make_dep_token",
        "aten::_has_compatible_shallow_copy_type",
        "aten::_nnz",
        "aten::dense_dim",
        "aten::sparse_dim",
        "aten::output_nr",
        "aten::q_scale",
        "aten::q_zero_point",
        "aten::qscheme",
        "aten::q_per_channel_axis",
    }
)
# Ops named as predicates (``is_pinned``, ``is_coalesced``, ``_is_zerotensor``, ...)
# answer from metadata and return no tensor: skipped too. ``is_nonzero`` reads the value.
_PREDICATE_READS = frozenset({"aten::is_nonzero"})
# Factories whose output is allocated but not written.
_NO_WRITE_OPS = frozenset(
    {
        "aten::empty",
        "aten::empty_strided",
        "aten::empty_like",
        "aten::empty_permuted",
        "aten::new_empty",
        "aten::new_empty_strided",
        "aten::empty_quantized",
        "aten::_empty_affine_quantized",
        "aten::_empty_per_channel_affine_quantized",
    }
)
# Factory options: an op that takes these builds a tensor from arguments, not from data.
_OPTIONS = frozenset({"dtype", "layout", "device", "pin_memory"})
# Tensor arguments that supply only metadata, outside the rule of _metadata_args (found
# by the measurement in tests/test_tracking_v2.py).
_METADATA_EXTRA: dict[str, frozenset[str]] = {
    "aten::_new_zeros_with_same_feature_meta": frozenset({"self"}),
    "aten::resize_as_": frozenset({"the_template"}),
    "aten::resize_as_sparse_": frozenset({"the_template"}),
}
# Ops other modules model (esper_lifetimes.distributed: the c10d collectives), by the
# code they put in _SPECIAL: code -> fn(tracker, plan, args, kwargs, out, site, vh).
_HANDLERS: dict[int, Callable[..., None]] = {}
_SPECIAL = {
    "aten::lift_fresh": _LIFT,
    "aten::_local_scalar_dense": _SCALAR,
    "aten::copy_": _COPY_,
    "aten::_to_copy": _TO_COPY,
    "aten::_pin_memory": _PIN,
    "aten::resize_": _RESIZE,
}


class _Plan:
    __slots__ = (
        "special",
        "pos",
        "kw",
        "fresh",
        "ret_fresh",
        "write_out",
        "pin_kw",
        "nb_i",
        "alias_i",
        "alias_name",
        "name",
        "func",
    )

    def __init__(self, name: str, special: int) -> None:
        self.name = name
        self.special = special
        self.pos: tuple[tuple[int, str, bool], ...] = ()
        self.kw: tuple[tuple[str, bool], ...] = ()
        self.fresh = False
        self.ret_fresh: tuple[bool, ...] = ()
        self.write_out = True
        self.pin_kw = False
        self.nb_i = -2  # index of `non_blocking` (-1: keyword-only, -2: none)
        self.alias_i = -1  # _MAYBE: the argument the result may alias
        self.alias_name = ""
        self.func: Any = None

    def non_blocking(self, args: tuple, kwargs: dict) -> bool:
        i = self.nb_i
        if 0 <= i < len(args):
            return bool(args[i])
        return bool(kwargs.get("non_blocking", False)) if kwargs else False


def _holds_tensor(ty: Any) -> bool:
    if isinstance(ty, torch.TensorType):
        return True
    if isinstance(ty, torch.OptionalType | torch.ListType):
        return _holds_tensor(ty.getElementType())
    return False


# id(OpOverload) -> plan (OpOverload.__hash__ is Python code; an id is free). The plan
# keeps its op alive, so an id is never reused while it is a key.
_PLANS: dict[int, _Plan] = {}
_SKIP_PLAN = _Plan("<skip>", _SKIP)


def _make_plan(func: Any) -> _Plan:
    try:
        plan = _build_plan(func)
    except Exception:
        # a higher-order op or an op without a schema: the mode cannot see what it
        # touches (its inner ops run with the mode popped); counted as unseen work
        try:
            name = str(getattr(func, "name", lambda: func)())
        except Exception:
            name = repr(func)
        plan = _Plan(name, _UNSEEN)
    if plan is _SKIP_PLAN:
        plan = _Plan("<skip>", _SKIP)
    plan.func = func
    _PLANS[id(func)] = plan
    return plan


def _metadata_args(func: Any, schema: Any) -> frozenset[str]:
    """The tensor arguments of an op that supply only shape, dtype and device.

    The rule: a factory (it takes the options ``dtype``, ``layout``, ``device``,
    ``pin_memory``) that is not a copy (no ``non_blocking``), with ``Tensor self`` first,
    builds its result from ``self``'s metadata: the ``*_like`` and ``new_*`` families.
    An overload without the options (``empty_like.out``) follows its packet's default
    overload. A few ops outside the rule are listed in ``_METADATA_EXTRA``.
    """
    extra = _METADATA_EXTRA.get(schema.name, frozenset())
    base = schema
    if not _OPTIONS <= {a.name for a in schema.arguments}:
        try:
            base = func.overloadpacket.default._schema
        except Exception:
            return extra
    names = {a.name for a in base.arguments}
    if not _OPTIONS <= names or "non_blocking" in names or not base.arguments:
        return extra
    first = base.arguments[0]
    if first.name == "self" and isinstance(first.type, torch.TensorType):
        if first.alias_info is None:
            return extra | {"self"}
    return extra


def _is_predicate(schema: Any) -> bool:
    """``is_*`` ops that return no tensor answer from metadata."""
    name = schema.name
    short = name.split("::", 1)[-1]
    if not (short.startswith("is_") or short.startswith("_is_")):
        return False
    if name in _PREDICATE_READS:
        return False
    return not any(_holds_tensor(r.type) for r in schema.returns)


def _may_alias(func: Any, schema: Any) -> bool:
    """A composite op whose result the schema marks as an alias of an input, but which
    returns a fresh storage when a copy is needed (``to``, ``contiguous``, ``reshape``,
    ...). Such ops reach the mode undecomposed under ``torch.inference_mode()``."""
    if not any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
        return False
    try:
        return bool(
            func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)
        )
    except Exception:
        return False


def _build_plan(func: Any) -> _Plan:
    schema = func._schema
    name = schema.name
    if name in _SKIP_OPS or _is_predicate(schema):
        return _SKIP_PLAN
    plan = _Plan(name, _SPECIAL.get(name, _GENERIC))
    meta = _metadata_args(func, schema)
    maybe = plan.special == _GENERIC and _may_alias(func, schema)
    pos: list[tuple[int, str, bool]] = []
    kw: list[tuple[str, bool]] = []
    for i, a in enumerate(schema.arguments):
        if a.name == "pin_memory":
            plan.pin_kw = True
        elif a.name == "non_blocking":
            plan.nb_i = -1 if a.kwarg_only else i
        if not _holds_tensor(a.type) or a.name in meta:
            continue
        ai = a.alias_info
        if ai is not None and not ai.is_write:
            if maybe and plan.alias_i < 0:
                plan.alias_i = i
                plan.alias_name = a.name
            continue  # a view input: touches no bytes
        if maybe and a.name == "other":
            continue  # `to(other)`, `reshape_as(other)`: dtype, device or shape only
        write = ai is not None and ai.is_write
        if a.kwarg_only:
            kw.append((a.name, write))
        else:
            pos.append((i, a.name, write))
    plan.pos = tuple(pos)
    plan.kw = tuple(kw)
    rets = []
    for r in schema.returns:
        rets.append(_holds_tensor(r.type) and r.alias_info is None)
    plan.ret_fresh = tuple(rets)
    plan.fresh = any(rets)
    plan.write_out = name not in _NO_WRITE_OPS
    if maybe and plan.alias_i >= 0:
        plan.special = _MAYBE
        return plan
    if plan.special == _GENERIC and not pos and not kw and not plan.fresh:
        return _SKIP_PLAN
    return plan


# ---------------------------------------------------------------------------------------
# Storage records

_VIRTUAL, _CUDA, _HOST = 0, 1, 2


class _Ref(weakref.ref):  # type: ignore[type-arg]
    """A weakref to an ``UntypedStorage`` that is also the tracker's record of it."""

    __slots__ = (
        "key",
        "ptr",
        "nbytes",
        "kind",
        "registered",
        "astream",
        "multi",
        "pinned",
        "pending",
        "policy",
    )

    key: int
    ptr: int
    nbytes: int
    kind: int
    registered: bool  # allocated in the engine (device memory)
    astream: int  # allocation stream
    multi: bool  # used on another stream, or record_stream'd: its free needs a site
    pinned: bool  # host memory that non-blocking copies run against
    pending: bool  # host memory that a non-blocking copy touched
    policy: int


def _span(t: torch.Tensor) -> int:
    """Bytes from the view's first element to one past its last, within its storage."""
    if t.is_contiguous():
        return t.nbytes
    if not t.numel():
        return 0
    ext = 1
    for s, st in zip(t.shape, t.stride(), strict=True):
        if s > 1:
            ext += (s - 1) * st
    return ext * t.element_size()


_vstate = virtual._state
_VDEFAULT = virtual.DEFAULT
_host_marks = virtual._host
# CUDA emulation (esper_lifetimes.emulate) sets this while it runs: a CPU storage is then
# emulated device memory when it carries the ``_esper_cuda`` tag, host memory otherwise.
_emulating = False


def _emu_host(st: Any) -> bool:
    """Under CUDA emulation, whether CPU storage ``st`` is host memory (untagged)."""
    return _emulating and getattr(st, "_esper_cuda", None) is None


_dynamo_compiling = torch.compiler.is_dynamo_compiling
_getframe = sys._getframe


def _vcurrent() -> int:
    vs = _vstate.stream
    return (vs if vs is not None else _VDEFAULT).handle


def _cuda_current(device: int) -> int:
    sid, didx, _ = torch._C._cuda_getCurrentStream(device)
    return patches.cuda_stream_handle(sid, didx)


def _cuda_default(device: int) -> int:
    sid, didx, _ = torch._C._cuda_getDefaultStream(device)
    return patches.cuda_stream_handle(sid, didx)


# ---------------------------------------------------------------------------------------
# The dispatch mode


class _Mode(TorchDispatchMode):
    """Feeds every aten op to one tracker."""

    supports_higher_order_operators = True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Torch wraps __torch_dispatch__ in a dynamo-disabling wrapper that costs more
        # than the whole tracker (measured ~15 us per op). Instead the method itself hands
        # the op straight to torch when dynamo traces it.
        return False

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.suspended = 0  # > 0 while an inner region owns the thread's events (patches.push)
        # An op budget (the always-on mode's windows): ops left to track, -1 for none;
        # past it, ops pass through (counted in ``passed``). Checked here, not in a
        # subclass's override, so that torch's caller stays frame 1 for the site lookup.
        self.left = -1
        self.passed = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, C901
        if kwargs is None:
            kwargs = {}
        if self.suspended or _dynamo_compiling():
            return func(*args, **kwargs)
        if _autocast.active:
            # a composite op under inference_mode + autocast: decomposed here, with the
            # autocast that is on outside, so that tracking changes no dtype (autocast.py)
            r = _autocast.run(self, func, args, kwargs)
            if r is not _autocast.NONE:
                return r
        left = self.left
        if left >= 0:
            if not left:
                self.passed += 1
                return func(*args, **kwargs)
            self.left = left - 1
        out = func(*args, **kwargs)
        plan = _PLANS.get(id(func))
        if plan is None:
            plan = _make_plan(func)
        sp = plan.special
        if sp == _SKIP:
            return out  # a view or metadata op: no bytes, no engine call
        tr = self.tracker
        if sp == _GENERIC:
            # The hot path, inlined: the common cases (a known storage standing for device
            # memory on a virtual stream, read or written whole; a fresh output) cost no
            # Python call but the engine's; everything else goes through Tracker._touch
            # and Tracker._fresh.
            try:
                # The site: the first frame outside torch and esper_lifetimes
                # (SiteTable.here, inlined). Frame 0 is this one, 1 torch's caller.
                f = _getframe(1)
                m = f.f_trace
                if m.__class__ is _SiteMark and m.table is tr._sites:
                    site = m.site  # a frame an earlier walk went through
                else:
                    cid = id(f.f_code)
                    if cid in _user_codes:  # torch called straight from user code
                        site = tr._site_ids.get((cid << 24) + f.f_lasti)
                        if site is None:
                            site = tr._sites.here_frame(f)
                    else:
                        site = tr._sites.from_frame(f)
                del f, m
                if tr._cpu_device:
                    vs = _vstate.stream
                    if vs is None:
                        vs = _VDEFAULT
                    vs._pending = True  # the op is work on the virtual stream
                    vh = vs.handle
                else:
                    vh = None
                recs = tr._recs
                access = tr._access
                n = len(args)
                for i, name, w in plan.pos:
                    if i < n:
                        a = args[i]
                    elif kwargs:
                        a = kwargs.get(name)
                    else:
                        continue
                    if isinstance(a, _Tensor):
                        try:
                            st = a.untyped_storage()
                        except Exception:
                            continue
                        ref = recs.get(id(st))
                        if ref is not None and ref.kind == _VIRTUAL:
                            nb = a.nbytes
                            if nb == ref.nbytes and nb:
                                if ref.astream != vh:
                                    ref.multi = True
                                try:
                                    access(ref.ptr, nb, vh, w, site)
                                except LifetimesError:
                                    tr._touch(a, w, site, vh)
                                continue
                        tr._touch(a, w, site, vh)
                    elif isinstance(a, _SEQ):
                        for x in a:
                            if isinstance(x, _Tensor):
                                tr._touch(x, w, site, vh)
                if kwargs:
                    for name, w in plan.kw:
                        a = kwargs.get(name)
                        if isinstance(a, _Tensor):
                            tr._touch(a, w, site, vh)
                        elif isinstance(a, _SEQ):
                            for x in a:
                                if isinstance(x, _Tensor):
                                    tr._touch(x, w, site, vh)
                if plan.fresh and out is not None:
                    host = plan.pin_kw and bool(kwargs.get("pin_memory"))
                    if not isinstance(out, _Tensor):
                        tr._outputs(out, plan, site, host, vh)
                    elif vh is not None and not host and out.is_cpu:
                        try:
                            st = out.untyped_storage()
                        except Exception:  # sparse, nested: not tracked
                            st = None
                        key = id(st)
                        if (
                            st is not None
                            and key not in recs
                            and key not in _host_marks
                            and not (_emulating and getattr(st, "_esper_cuda", None) is None)
                        ):
                            # a fresh storage on the virtual stream: register, then write
                            ref = _Ref(st, tr._on_free_cb)
                            ref.key = key
                            ref.kind = _VIRTUAL
                            ref.ptr = p = st.data_ptr()
                            ref.nbytes = nbytes = st.nbytes()
                            ref.astream = vh
                            ref.multi = False
                            if tr._shared:
                                ref.policy = tr._current_policy()
                            recs[key] = ref
                            ref.registered = False
                            if nbytes and p:
                                try:
                                    tr._alloc(p, nbytes, vh, site)
                                    ref.registered = True
                                except LifetimesError:
                                    tr._engine_alloc(ref, vh, site)
                                if plan.write_out and ref.registered:
                                    if out.nbytes == nbytes:
                                        access(p, nbytes, vh, True, site)
                                    else:
                                        tr._touch(out, True, site, vh)
                        # else: a storage already known is an alias of an input
                    else:
                        tr._fresh(out, plan.write_out, site, host, vh)
            except Exception as exc:
                tr._note(exc, plan.name)
        else:
            try:
                tr._apply(plan, args, kwargs, out)
            except Exception as exc:
                tr._note(exc, plan.name)
        if tr._error_count() != tr._errors_seen:
            tr._safe_point()
        return out


# ---------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """Tracks one region (``with track() as t``) or, shared, every ``@checked`` call.

    Results: :attr:`hazards`, :attr:`errors`, :attr:`advice`, :meth:`report`,
    :attr:`diagnostics` (internal failures, normally empty), :attr:`engine`.
    """

    # Suspended while another tracker is active above it on the same thread (the pytest
    # plugin's per-test region and the always-on tracker set this; see patches.push).
    yield_to_inner = False

    def __init__(
        self, on_hazard: str = "raise", *, cpu: str | None = None, timeline: Any = None
    ) -> None:
        self.policy = _policy(on_hazard)
        if cpu is None:
            cpu = "host" if torch.cuda.is_available() and not _emulating else "device"
        if cpu not in ("device", "host"):
            raise ConfigError(f"cpu must be 'device' or 'host', not {cpu!r}")
        self.cpu = cpu
        # under CUDA emulation, emulated CUDA tensors are device memory whatever ``cpu`` says
        self._cpu_device = cpu == "device" or _emulating
        self._cuda_ok = torch.cuda.is_available() and not _emulating
        self._state = "new"
        self._shared = False
        self._eng: Any = None
        self._recs: dict[int, _Ref] = {}
        self._named: set[int] = set()
        self._seen = 0  # hazards already passed to the policy (index into the list)
        self._errors_seen = 0  # engine.error_count() at the last safe point
        self._pending_policy = -1  # strictest policy of storages freed with new errors
        # shared (@checked): policy of storages whose free the engine may judge later
        # (a pending free, judged at the next alloc on its stream or at flush), by ptr
        self._free_policy: dict[int, int] = {}
        # errors held back from a finalizer (never a safe point), and their policy
        self._held: list[Hazard] = []
        self._held_policy = -1
        self._watching = False
        self._lock = threading.RLock()
        self._tls = threading.local()
        self._diag_count = 0
        self._diag: list[str] = []
        # Register a storage first seen as an input (allocated before tracking) on the
        # default stream. A tracker that sees only windows of a run sets it False.
        self._adopt_unseen = True
        # Memory shared by several storage objects (two from_numpy of one array,
        # frombuffer, DLPack): the first registered owns the engine storage, the others
        # are members over it. id(member ref) -> owner ref; id(owner ref) -> live members;
        # id(owner ref) -> owner whose storage died while members held the memory.
        self._owner_of: dict[int, _Ref] = {}
        # What the report must say besides hazards: work that ran unseen, and work that
        # ran differently so that it could be seen; "what at site" -> count
        self._unseen: dict[str, int] = {}
        self._notes: dict[str, int] = {}
        # modes of threads started inside the region (suspended when it closes)
        self._child_modes: weakref.WeakSet[_Mode] = weakref.WeakSet()
        self._members: dict[int, int] = {}
        self._orphans: dict[int, _Ref] = {}
        # A reports.Timeline that records every engine call (for the Chrome trace and the
        # HTML report), or None: the engine is then used directly.
        self.timeline = timeline

    # -- results ----------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        """The engine (``None`` before the tracker starts, or when tracking is disabled)."""
        return self._eng

    @property
    def hazards(self) -> list[Hazard]:
        """Every distinct hazard found, in the order found."""
        return self._eng.hazards() if self._eng is not None else []

    @property
    def errors(self) -> list[Hazard]:
        return [h for h in self.hazards if h.severity == "error"]

    @property
    def advice(self) -> list[Hazard]:
        return [h for h in self.hazards if h.severity != "error"]

    @property
    def diagnostics(self) -> list[str]:
        """Internal failures (the first few, with a count): empty when all went well."""
        if self._diag_count > len(self._diag):
            return [*self._diag, f"... {self._diag_count - len(self._diag)} more"]
        return list(self._diag)

    def report(self, hazards: list[Hazard] | None = None) -> str:
        """The readable report of ``hazards`` (default: all found), followed by what ran
        unseen and what ran differently so that it was seen (``unseen``, ``notes``)."""
        hs = self.hazards if hazards is None else hazards
        text = format_report(
            hs, diagnostics=self._diag_count if hazards is None else 0, fix_for=_fix_for
        )
        if hazards is None:
            extra = self._coverage_lines()
            if extra:
                text += "\n\n" + "\n".join(extra)
        return text

    @property
    def unseen(self) -> dict[str, int]:
        """Work that ran during the region without the tracker seeing its memory
        accesses (CUDA graph replays, collectives issued from C++, ...): ``"what at
        site"`` -> count. Hazards it hides cannot be reported: the report says so."""
        out = dict(self._unseen)
        dist = sys.modules.get("esper_lifetimes.distributed")
        if dist is not None:
            try:
                for k, n in dist.unseen(self).items():
                    out[k] = out.get(k, 0) + n
            except Exception:  # noqa: S110 - a report never fails
                pass
        return out

    @property
    def notes(self) -> dict[str, int]:
        """Work that ran differently so that it was tracked (``torch.compile``d
        functions run eagerly inside a region): ``"what at site"`` -> count."""
        return dict(self._notes)

    def _coverage_lines(self) -> list[str]:
        lines = []
        unseen = self.unseen
        if unseen:
            n = sum(unseen.values())
            where = "; ".join(f"{k} (x{c})" if c > 1 else k for k, c in unseen.items())
            lines.append(
                f"{n} op{'s' * (n != 1)} ran unseen ({where}): hazards they cause or hide "
                "are not in this report"
            )
        for k, c in self._notes.items():
            lines.append(f"note: {k}" + (f" (x{c})" if c > 1 else ""))
        return lines

    def _count(self, table: dict[str, int], what: str, depth: int) -> None:
        try:
            f = user_frame(depth)
            site = format_site(f.f_code.co_filename, f.f_lineno) if f is not None else None
            del f
        except Exception:
            site = None
        key = f"{what} at {site}" if site else what
        with self._lock:
            table[key] = table.get(key, 0) + 1

    def __repr__(self) -> str:
        n = len(self.hazards)
        return f"<esper_lifetimes.Tracker {self._state}, {n} hazard{'s' * (n != 1)}>"

    # -- region -----------------------------------------------------------------------

    def __enter__(self) -> Tracker:
        if self._state != "new":
            raise RuntimeError("a Tracker is entered once; call track() again")
        if not _config.enabled:
            self._state = "disabled"
            return self
        self._start()
        self._attach()
        self._state = "active"
        self._owner = threading.get_ident()
        return self

    def __exit__(self, et: Any, ev: BaseException | None, tb: Any) -> bool:
        if self._state != "active":
            return False
        owner = getattr(self, "_owner", None)
        if owner is not None and owner != threading.get_ident():
            # its dispatch mode and patch state live on the entering thread: leave them
            # as they are (that thread can still exit the region) and refuse
            raise RuntimeError(
                f"a track() region is exited on the thread that entered it (entered on "
                f"thread {owner}, exited on thread {threading.get_ident()}); nothing "
                "was changed: exit it on its own thread"
            )
        try:
            self._detach()
        finally:
            self._state = "closed"
            self._close()
        self._safe_point(exc=ev, final=True)
        return False

    @property
    def active(self) -> bool:
        return self._state == "active"

    def _start(self) -> None:
        eng = Engine() if self.timeline is None else self.timeline.wrap(Engine())
        self._eng = eng
        self._sites = SiteTable(eng)
        self._site_ids = self._sites._ids
        self._error_count = eng.error_count
        self._access = eng.access
        self._alloc = eng.alloc
        self._on_free_cb = self._on_free  # one bound method for every weakref
        self._watching = True
        for s in virtual.all_streams():
            self._define_virtual_stream(s)
        patches.add_live(self)

    def _attach(self) -> None:
        patches.install()
        try:
            mode = _Mode(self)
            mode.__enter__()
        except BaseException:
            patches.uninstall()
            raise
        patches.push(self, mode)
        _follow_threads(1)
        _follow_compiled(1)

    def _detach(self) -> None:
        mode = patches.pop(self)
        try:
            if mode is not None:
                mode.__exit__(None, None, None)
        finally:
            _follow_threads(-1)
            _follow_compiled(-1)
            patches.uninstall()

    def _enter_thread(self) -> bool:
        """A thread started inside this tracker's region begins: its ops are tracked
        too, each on that thread's own current stream. Its hazards surface at the
        region's safe points (never raised in the thread)."""
        if not self._watching:
            return False
        patches.install()
        try:
            mode = _Mode(self)
            mode.__enter__()
        except BaseException:
            patches.uninstall()
            raise
        patches.push(self, mode)
        self._tls.child = True
        with self._lock:
            self._child_modes.add(mode)
        return True

    def _exit_thread(self) -> None:
        mode = patches.pop(self)
        try:
            if mode is not None:
                with self._lock:
                    self._child_modes.discard(mode)
                mode.__exit__(None, None, None)
        finally:
            self._tls.child = False
            patches.uninstall()

    def _close(self) -> None:
        with self._lock:
            for mode in self._child_modes:
                mode.suspended += 1  # a thread outliving the region: no longer tracked
            self._child_modes.clear()
        # the end of the region (or of the shared tracker): every pending free is
        # judged now, and per-site record_stream advice is decided
        if self._watching and self._eng is not None:
            try:
                self._eng.flush()
            except Exception as exc:
                self._note(exc, "flush")
        self._watching = False
        patches.discard_live(self)
        self._recs.clear()
        self._owner_of.clear()
        self._members.clear()
        self._orphans.clear()

    def _current_policy(self) -> int:
        if self._shared:
            p = getattr(self._tls, "policy", None)
            if p is not None:
                return p
        return self.policy

    # -- policy -------------------------------------------------------------------------

    def _safe_point(self, exc: BaseException | None = None, final: bool = False) -> None:
        eng = self._eng
        if eng is None:
            return
        if self._tls.__dict__.get("child"):
            return  # a thread the region follows: its hazards surface in the region
        if patches._pending_base is not None:
            patches.raise_pending()  # a signal's exception caught in a callback of ours
        n = eng.error_count()
        if n == self._errors_seen and not self._held:
            return
        with self._lock:
            held, self._held = self._held, []
            pol = self._held_policy
            self._held_policy = -1
            new: list[Hazard] = []
            if n != self._errors_seen:
                new = eng.hazards(self._seen)
                self._seen += len(new)
                self._errors_seen = n
                pol = max(pol, self._current_policy(), self._pending_policy)
                self._pending_policy = -1
                fp = self._free_policy
                if fp:
                    for h in new:
                        if h.severity == "error" and h.ptr in fp:
                            pol = max(pol, fp.pop(h.ptr))
        errors = held + [h for h in new if h.severity == "error"]
        if not errors:
            return
        if pol == RAISE and exc is None and _in_finalizer():
            # A finalizer swallows what it raises: hold the errors for the next real
            # safe point (the next op, patched call or @checked call) or the region's exit
            with self._lock:
                self._held = errors + self._held
                self._held_policy = max(self._held_policy, pol)
            return
        text = format_report(errors, fix_for=_fix_for)
        if pol == RAISE:
            if exc is None:
                raise LifetimeHazardError(text, errors)
            if hasattr(exc, "add_note"):
                exc.add_note(text)
        elif pol == WARN:
            _warn(text)

    def _note(self, exc: BaseException, where: str) -> None:
        self._diag_count += 1
        if len(self._diag) < 20:
            self._diag.append(f"{where}: {type(exc).__name__}: {exc}")

    # -- streams ------------------------------------------------------------------------

    def _define_virtual_stream(self, s: virtual.Stream) -> None:
        eng = self._eng
        if eng is None or s.handle in self._named:
            return
        try:
            eng.define_stream(s.handle, s.name, True)
            self._named.add(s.handle)
        except Exception as exc:
            self._note(exc, "define_stream")

    def _name_cuda(self, h: int) -> None:
        if h in self._named:
            return
        self._named.add(h)
        try:
            dev = (h >> 48) & 0xFF
            sid = h & ((1 << 48) - 1)
            name = f"cuda:{dev} default" if sid == 0 else f"cuda:{dev} stream {sid:#x}"
            self._eng.define_stream(h, name, False)
        except Exception as exc:
            self._note(exc, "define_stream")

    def _forget_event(self, h: int) -> None:
        try:
            if self._eng is not None:
                self._eng.forget_event(h)
        except Exception as exc:
            self._note(exc, "forget_event")

    # -- the per-op path --------------------------------------------------------------

    def _apply(self, plan: _Plan, args: tuple, kwargs: dict, out: Any) -> None:
        """The ops that need more than their schema (copies, ``.item()``, ...)."""
        # frames: here (0), _apply (1), __torch_dispatch__ (2), torch's caller (3)
        site = self._sites.here(3)
        if self._cpu_device:
            vs = _vstate.stream
            if vs is None:
                vs = _VDEFAULT
            vs._pending = True  # the op is work on the virtual stream
            vh = vs.handle
        else:
            vh = None
        sp = plan.special
        if sp == _SCALAR:
            a = args[0] if args else None
            if isinstance(a, _Tensor):
                h = self._touch(a, False, site, vh)
                if h is not None:
                    self._eng.stream_synchronize(h)
        elif sp == _COPY_ or sp == _TO_COPY:
            self._copy(plan, args, kwargs, out, site)
        elif sp == _LIFT:
            # torch.tensor(data[, device=...]): a blocking copy from Python data into a
            # new storage, then the host waits for the current stream
            a = args[0] if args else None
            if isinstance(a, _Tensor):
                st = a.untyped_storage()
                key = id(st)
                if key not in self._recs:
                    ref = self._new_ref(a, st, key, True, site, False, vh)
                    if ref is not None and ref.kind != _HOST:
                        h = self._touch(a, True, site, vh)
                        if h is not None:
                            self._blocking_sync(h)
        elif sp == _MAYBE:
            self._maybe_copy(plan, args, kwargs, out, site, vh)
        elif sp == _PIN:
            for i, _name, w in plan.pos:
                if i < len(args) and isinstance(args[i], _Tensor):
                    self._touch(args[i], w, site, vh)
            if isinstance(out, _Tensor):
                self._fresh(out, False, site, True, vh)
        elif sp == _RESIZE:
            a = args[0] if args else None
            if isinstance(a, _Tensor):
                st = a.untyped_storage()
                ref = self._recs.get(id(st))
                if ref is not None:
                    self._resync(st, ref, site, None)
        elif sp == _UNSEEN:
            self._count(self._unseen, f"op {plan.name}", 3)
        else:
            handler = _HANDLERS.get(sp)
            if handler is not None:
                handler(self, plan, args, kwargs, out, site, vh)

    def _maybe_copy(
        self, plan: _Plan, args: tuple, kwargs: dict, out: Any, site: Any, vh: int | None
    ) -> None:
        """An op that may return its input or a copy (``to``, ``contiguous``, ``reshape``
        under inference mode): what it did is told by the result's storage, not by the
        schema. A result over a storage of no argument is a fresh copy."""
        i = plan.alias_i
        src = args[i] if i < len(args) else kwargs.get(plan.alias_name)
        if not isinstance(src, _Tensor):
            return
        try:
            skey = id(src.untyped_storage())
        except Exception:
            return
        outs = out if isinstance(out, _SEQ) else (out,)
        fresh = []
        for o in outs:
            if isinstance(o, _Tensor) and o is not src:
                try:
                    if id(o.untyped_storage()) != skey:
                        fresh.append(o)
                except Exception:
                    continue
        if not fresh:
            return  # an alias after all: no bytes touched
        if plan.name == "aten::to":
            nb = plan.non_blocking(args, kwargs)
            for o in fresh:
                self._copy_tensors(src, o, True, nb, site)
            return
        self._touch(src, False, site, vh)
        n = len(args)
        for j, name, w in plan.pos:
            a = args[j] if j < n else kwargs.get(name)
            if isinstance(a, _Tensor):
                self._touch(a, w, site, vh)
        pin = plan.name == "aten::pin_memory"
        for o in fresh:
            self._fresh(o, not pin, site, pin, vh)

    def _blocking_sync(self, h: int) -> None:
        """The host waits for stream ``h`` (a blocking op enqueued on it)."""
        self._eng.stream_synchronize(h)
        vs = virtual._streams.get(h)
        if vs is not None:
            vs._pending = False

    def _outputs(self, out: Any, plan: _Plan, site: Any, host: bool, vh: int | None) -> None:
        if not isinstance(out, _SEQ):
            return
        w = plan.write_out
        rf = plan.ret_fresh
        if len(rf) > 1 and len(rf) == len(out):
            for o, f in zip(out, rf, strict=True):
                if f:
                    self._walk_fresh(o, w, site, host, vh)
        elif rf and rf[0]:
            self._walk_fresh(out, w, site, host, vh)

    def _walk_fresh(self, o: Any, w: bool, site: Any, host: bool, vh: int | None) -> None:
        if isinstance(o, _Tensor):
            self._fresh(o, w, site, host, vh)
        elif isinstance(o, _SEQ):
            for x in o:
                self._walk_fresh(x, w, site, host, vh)

    def _touch(
        self,
        t: torch.Tensor,
        write: bool,
        site: Any,
        vh: int | None = None,
    ) -> int | None:
        """One access by the current op. Returns the stream it ran on (None: host)."""
        try:
            st = t.untyped_storage()
        except Exception:  # sparse, nested, or a subclass without storage
            return None
        key = id(st)
        ref = self._recs.get(key)
        if ref is None:
            try:
                ref = self._new_ref(t, st, key, False, None, False, vh)
            except RuntimeError:
                # a wrapper subclass (AsyncCollectiveTensor, DTensor) without data of its
                # own: the ops on its inner tensors are dispatched below this mode
                return None
            if ref is None:
                return None
        kind = ref.kind
        if kind == _VIRTUAL:
            h = vh if vh is not None else _vcurrent()
        elif kind == _CUDA:
            h = _cuda_current(t.get_device())
            if h not in self._named:
                self._name_cuda(h)
        else:
            if ref.pending:
                n = _span(t)
                if n:
                    self._eng.host_access(t.data_ptr(), n, write, site)
            return None
        if h != ref.astream:
            ref.multi = True
        n = t.nbytes
        if n == ref.nbytes:
            # as many bytes as the storage holds: the view covers all of it
            p = ref.ptr
        else:
            if not t.is_contiguous():
                n = _span(t)
            p = t.data_ptr()
        if n:
            try:
                self._access(p, n, h, write, site)
            except LifetimesError as exc:
                if self._resync(st, ref, site, h):
                    self._access(t.data_ptr(), _span(t), h, write, site)
                else:
                    self._note(exc, "access")
        return h

    def _fresh(
        self,
        t: torch.Tensor,
        write: bool,
        site: Any,
        host: bool,
        vh: int | None = None,
    ) -> None:
        """A tensor an op returned that aliases none of its inputs (by its schema). A
        storage already known is an alias all the same (``_unsafe_view`` and kin):
        nothing is done for it."""
        try:
            st = t.untyped_storage()
        except Exception:
            return
        key = id(st)
        if key in self._recs:
            return
        ref = self._new_ref(t, st, key, True, site, host, vh)
        if ref is None or ref.kind == _HOST:
            return
        if write:
            self._touch(t, True, site, vh)

    # -- registration -----------------------------------------------------------------

    def _new_ref(
        self,
        t: torch.Tensor,
        st: Any,
        key: int,
        fresh: bool,
        site: Any,
        host: bool,
        vh: int | None = None,
    ) -> _Ref | None:
        """Registers a storage seen for the first time (``fresh``: just allocated)."""
        if not fresh and not self._adopt_unseen:
            return None
        if t.is_cpu:
            if host or key in _host_marks:
                ref = _Ref(st, self._on_free_cb)
                ref.key = key
                ref.kind = _HOST
                ref.ptr = st.data_ptr()
                ref.nbytes = st.nbytes()
                ref.registered = False
                ref.astream = 0
                ref.multi = False
                ref.pinned = True
                ref.pending = False
                if self._shared:
                    ref.policy = self._current_policy()
                self._recs[key] = ref
                return ref
            if not self._cpu_device or _emu_host(st):
                return None
            kind = _VIRTUAL
            if not fresh:
                stream = virtual.DEFAULT_HANDLE
            else:
                stream = vh if vh is not None else _vcurrent()
        elif t.is_cuda:
            kind = _CUDA
            dev = t.get_device()
            stream = _cuda_current(dev) if fresh else _cuda_default(dev)
            self._name_cuda(stream)
        else:
            return None  # meta, or a device this tracker does not model
        ref = _Ref(st, self._on_free_cb)
        ref.key = key
        ref.kind = kind
        ref.ptr = p = st.data_ptr()
        ref.nbytes = n = st.nbytes()
        ref.registered = False
        ref.astream = stream
        ref.multi = False
        if self._shared:
            ref.policy = self._current_policy()
        if n and p:
            if fresh:
                self._engine_alloc(ref, stream, site)
            else:
                self._engine_alloc(ref, stream, None, adopt=True)
        self._recs[key] = ref
        return ref

    def _host_ref(self, t: torch.Tensor, pinned: bool) -> _Ref | None:
        """The host record of CPU tensor ``t`` (created when missing)."""
        st = t.untyped_storage()
        key = id(st)
        ref = self._recs.get(key)
        if ref is None:
            ref = self._new_ref(t, st, key, True, None, True)
            if ref is not None:
                ref.pinned = pinned
        if ref is None or ref.kind != _HOST:
            return None
        if pinned:
            ref.pinned = True
        return ref

    def _engine_alloc(self, ref: _Ref, stream: int, site: Any, adopt: bool = False) -> None:
        """Registers ``ref``'s bytes: ``alloc`` for an allocation seen now, ``adopt`` for
        a storage whose allocation the tracker did not see (never judged by
        ``unwaited-allocation``, no pending-free verdicts or reuse checks)."""
        eng = self._eng
        ref.astream = stream
        ref.multi = False
        register = eng.adopt if adopt else eng.alloc
        try:
            register(ref.ptr, ref.nbytes, stream, site)
        except LifetimesError as exc:
            # Overlaps a live storage: either one whose free the tracker has not seen yet
            # (its memory was handed out again), or a genuine alias of the same memory.
            if not self._evict_overlaps(ref.ptr, ref.nbytes):
                if not self._share(ref):
                    self._note(exc, "alloc (aliases live storage)")
                return
            try:
                register(ref.ptr, ref.nbytes, stream, site)
            except LifetimesError as exc2:
                self._note(exc2, "alloc")
                return
        ref.registered = True

    def _share(self, ref: _Ref) -> bool:
        """``ref`` is a second storage object over bytes a live registered storage holds
        (``torch.from_numpy`` twice, ``frombuffer``, DLPack): it becomes a member of that
        storage. Its accesses go to the owner's bytes; the memory is freed, in the
        engine, when the last storage object over it dies. False when ``ref``'s bytes
        are not inside one registered storage."""
        found = self._eng.storage_at(ref.ptr)
        if found is None:
            return False
        base, n, _stream = found
        if ref.ptr + ref.nbytes > base + n:
            return False
        owner = None
        for cand in (*self._recs.values(), *self._orphans.values()):
            if cand.registered and cand.ptr == base and cand is not ref:
                owner = cand
                break
        if owner is None:
            return False
        root = self._owner_of.get(id(owner))
        if root is not None:
            owner = root
        self._owner_of[id(ref)] = owner
        self._members[id(owner)] = self._members.get(id(owner), 0) + 1
        ref.astream = owner.astream
        ref.kind = owner.kind
        return True

    def _release_shared(self, ref: _Ref, multi: bool) -> bool:
        """A storage object of shared memory died. True when that was handled here: a
        member left (the owner's storage is dropped when it was the last and the owner
        died before), or the owner died while members hold the memory (kept until the
        last one dies)."""
        owner = self._owner_of.pop(id(ref), None)
        if owner is not None:
            if multi:
                owner.multi = True
            oid = id(owner)
            left = self._members.get(oid, 1) - 1
            if left > 0:
                self._members[oid] = left
                return True
            self._members.pop(oid, None)
            if self._orphans.pop(oid, None) is not None:
                self._drop(owner, self._sites.here(3) if owner.multi else None)
            return True
        if id(ref) in self._members:
            self._orphans[id(ref)] = ref
            return True
        return False

    def _evict_overlaps(self, ptr: int, nbytes: int) -> bool:
        """Frees (late) every stale storage over ``[ptr, ptr+nbytes)``; False when one of
        them is still alive at its recorded place."""
        end = ptr + nbytes
        ok = True
        for old in list(self._recs.values()):
            if not old.registered or old.ptr >= end or old.ptr + old.nbytes <= ptr:
                continue
            st = old()
            if st is not None:
                try:
                    if st.data_ptr() == old.ptr and st.nbytes() == old.nbytes:
                        ok = False
                        continue
                except Exception:
                    pass
            self._drop(old, None)
            self._diag_count += 1
            if len(self._diag) < 20:
                self._diag.append(f"late free of {old.ptr:#x}: seen after its reuse")
        return ok

    def _drop(self, ref: _Ref, site: Any) -> None:
        """The engine-side free of a registered storage."""
        if not ref.registered:
            return
        ref.registered = False
        eng = self._eng
        if not self._shared:
            eng.free(ref.ptr, site)
            return
        before = eng.error_count()
        eng.free(ref.ptr, site)
        if eng.error_count() != before:
            if ref.policy > self._pending_policy:
                self._pending_policy = ref.policy
        elif ref.multi:
            _remember_free_policy(self, ref)

    def _resync(self, st: Any, ref: _Ref, site: Any, stream: int | None) -> bool:
        """The storage's memory moved or changed size (``resize_``, ``set_``, an ``out=``
        argument resized): free the old bytes, allocate the new. True when it did."""
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr == ref.ptr and n == ref.nbytes:
            return False
        if ref.kind == _HOST:
            if ref.pending:
                self._eng.host_release(ref.ptr, ref.nbytes)
                ref.pending = False
            ref.ptr, ref.nbytes = ptr, n
            return True
        if ref.registered:
            self._drop(ref, site)
        ref.ptr, ref.nbytes = ptr, n
        if n and ptr:
            if stream is None:
                stream = self._alloc_stream_now(ref, st)
            self._engine_alloc(ref, stream, site)
        return ref.registered

    def _alloc_stream_now(self, ref: _Ref, st: Any) -> int:
        if ref.kind == _CUDA:
            h = _cuda_current(st.device.index)
            self._name_cuda(h)
            return h
        return _vcurrent()

    def _on_free(self, ref: _Ref) -> None:
        """weakref callback: the storage died. Never raises."""
        try:
            recs = self._recs
            key = ref.key
            other = recs.pop(key, None)
            if other is not ref and other is not None:
                recs[key] = other  # not this record's entry (it was replaced)
            if not self._watching:
                return
            if ref.kind == _HOST:
                if ref.pending:
                    ref.pending = False
                    self._eng.host_release(ref.ptr, ref.nbytes)
                return
            if self._members and self._release_shared(ref, ref.multi):
                return
            if ref.registered:
                # a storage only ever used on its allocation stream frees without a site:
                # no verdict of its free can name one
                if ref.multi:
                    self._drop(ref, self._sites.here(2))
                elif self._shared:
                    self._drop(ref, None)
                else:
                    ref.registered = False
                    self._eng.free(ref.ptr, None)
        except Exception as exc:
            self._note(exc, "free")
        except BaseException as exc:  # a signal landed here: Python would swallow it
            patches.redeliver(exc)

    # -- copies -------------------------------------------------------------------------

    def _side(self, t: torch.Tensor) -> str:
        if t.is_cuda:
            return "d"
        if not t.is_cpu:
            return "-"
        st = t.untyped_storage()
        key = id(st)
        ref = self._recs.get(key)
        if ref is not None:
            return "h" if ref.kind == _HOST else "d"
        if key in _host_marks or not self._cpu_device or _emu_host(st):
            return "h"
        return "d"

    def _is_pinned(self, t: torch.Tensor) -> bool:
        ref = self._recs.get(id(t.untyped_storage()))
        if ref is not None and ref.kind == _HOST and ref.pinned:
            return True
        if id(t.untyped_storage()) in _host_marks:
            return True
        if self._cuda_ok:
            try:
                return bool(t.is_pinned())
            except Exception:
                return False
        return False

    def _copy(self, plan: _Plan, args: tuple, kwargs: dict, out: Any, site: Any) -> None:
        if plan.special == _TO_COPY:
            src = args[0] if args else kwargs.get("self")
            dst = out
        else:
            dst = args[0] if args else kwargs.get("self")
            src = args[1] if len(args) > 1 else kwargs.get("src")
        if not isinstance(src, _Tensor) or not isinstance(dst, _Tensor):
            return
        nb = plan.non_blocking(args, kwargs)
        self._copy_tensors(src, dst, plan.special == _TO_COPY, nb, site)

    def _copy_tensors(
        self, src: torch.Tensor, dst: torch.Tensor, fresh: bool, nb: bool, site: Any
    ) -> None:
        """A copy from ``src`` into ``dst`` (``fresh``: a new tensor the op returned).

        Host and device: a copy between them is enqueued on the current stream; one made
        without ``non_blocking=True`` is followed by the host waiting for that stream.
        A device copy touching pinned memory is a device access of host memory on its
        stream (``copy_to_host``: a write, ``copy_from_host``: a read), checked against
        the other copies over those bytes and against host accesses; never a host access.
        """
        s_side = self._side(src)
        if fresh:
            if dst.is_cuda:
                d_side = "d"
            elif not dst.is_cpu:
                d_side = "-"
            elif _emulating:
                d_side = "h" if _emu_host(dst.untyped_storage()) else "d"
            elif src.is_cuda or s_side == "h":
                d_side = "h"
            else:
                d_side = "d" if self._cpu_device else "h"
        else:
            d_side = self._side(dst)
        eng = self._eng
        if s_side == "h" and d_side == "d":
            # host to device: the write runs on the destination's stream
            h = self._dst(dst, fresh, site)
            if h is None:
                return
            if self._is_pinned(src):
                ref = self._host_ref(src, True)
                n = _span(src)
                if ref is not None and n:
                    eng.copy_from_host(src.data_ptr(), n, h, site)
                    ref.pending = True
            else:
                # pageable memory: the host copies the source out before the call returns
                self._touch(src, False, site)
            if not nb:
                self._blocking_sync(h)
        elif s_side == "d" and d_side == "h":
            h = self._touch(src, False, site)
            if h is None:
                return
            # torch pins the output of a non-blocking device-to-host _to_copy
            pinned = (nb and (src.is_cuda or _emulating)) if fresh else self._is_pinned(dst)
            if pinned:
                ref = self._host_ref(dst, True)
                n = _span(dst)
                if ref is not None and n:
                    eng.copy_to_host(dst.data_ptr(), n, h, site)
                    ref.pending = True
                if not nb:
                    self._blocking_sync(h)
            else:
                # into pageable memory, which CUDA makes synchronous
                self._blocking_sync(h)
                if not fresh:
                    self._touch(dst, True, site)
                else:
                    self._host_ref(dst, False)
        else:
            self._touch(src, False, site)
            if fresh:
                self._fresh(dst, True, site, d_side == "h")
            else:
                self._touch(dst, True, site)

    def _dst(self, dst: torch.Tensor, fresh: bool, site: Any) -> int | None:
        if fresh:
            self._fresh(dst, False, site, False)
        return self._touch(dst, True, site)

    # -- events from patched calls and virtual streams ----------------------------------

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._note(exc, what)

    def on_stream_wait(self, waiter: int, waited: int) -> None:
        self._name_if_cuda(waiter, waited)
        self._guard("wait_stream", self._eng.stream_wait, waiter, waited)

    def on_event_record(self, event: int, stream: int) -> None:
        self._name_if_cuda(stream)
        self._guard("event_record", self._eng.event_record, event, stream)

    def on_event_wait(self, event: int, stream: int) -> None:
        self._name_if_cuda(stream)
        self._guard("event_wait", self._eng.event_wait, event, stream)

    def on_stream_sync(self, stream: int) -> None:
        self._name_if_cuda(stream)
        self._guard("stream_synchronize", self._eng.stream_synchronize, stream)

    def on_event_sync(self, event: int) -> None:
        self._guard("event_synchronize", self._eng.event_synchronize, event)

    def on_device_sync(self) -> None:
        self._guard("device_synchronize", self._eng.device_synchronize)

    def on_stream_query(self, stream: int, complete: bool) -> None:
        self._name_if_cuda(stream)
        self._guard("stream_query", self._eng.stream_query, stream, complete)

    def on_event_query(self, event: int, complete: bool) -> None:
        self._guard("event_query", self._eng.event_query, event, complete)

    def _name_if_cuda(self, *handles: int) -> None:
        for h in handles:
            if h not in self._named and h & patches._CUDA_STREAM_TAG:
                self._name_cuda(h)

    def on_record_stream(self, t: torch.Tensor, stream: int) -> None:
        try:
            self._name_if_cuda(stream)
            st = t.untyped_storage()
            key = id(st)
            ref = self._recs.get(key)
            if ref is None:
                ref = self._new_ref(t, st, key, False, None, False)
            if ref is None or ref.kind == _HOST:
                return  # untracked (always-on outside a window): no site walk
            site = self._sites.here(2)
            owner = self._owner_of.get(id(ref)) if self._owner_of else None
            if owner is not None:
                ref = owner  # shared memory: the owner's storage holds the record
            elif not ref.registered:
                self._resync(st, ref, site, None)
            if ref.registered:
                ref.multi = True
                self._eng.record_stream(ref.ptr, stream, site)
        except Exception as exc:
            self._note(exc, "record_stream")

    def on_host_read(self, t: torch.Tensor, device_sync: bool = True) -> None:
        """A blocking host read of ``t`` (``tolist``, ``numpy``, printing, ``cpu``)."""
        try:
            if t.is_cpu and not self._cpu_device:
                key = id(t.untyped_storage())
                if key not in self._recs and key not in _host_marks:
                    return
            site = self._sites.here(2)
            if not device_sync and self._side(t) == "d":
                return
            h = self._touch(t, False, site)
            if h is not None:
                self._eng.stream_synchronize(h)
        except Exception as exc:
            self._note(exc, "host read")

    def on_storage_resized(self, st: Any) -> None:
        try:
            ref = self._recs.get(id(st))
            if ref is None:
                return
            self._resync(st, ref, self._sites.here(2), None)
        except Exception as exc:
            self._note(exc, "resize_")


def _remember_free_policy(tr: Tracker, ref: _Ref) -> None:
    """The shared tracker: a free used on another stream may be judged later (at the
    next allocation on its stream, or at flush); its storage's policy applies then."""
    fp = tr._free_policy
    if len(fp) >= 4096:
        try:
            if not tr._eng.stats().get("pending_frees"):
                fp.clear()  # every earlier free has its verdict
        except Exception:
            fp.clear()
        if len(fp) >= 65536:
            fp.clear()  # bounded: a later verdict then takes the current policy
    if fp.get(ref.ptr, -1) < ref.policy:
        fp[ref.ptr] = ref.policy


def _in_finalizer() -> bool:
    """Whether a finalizer (``__del__``, a ``weakref.finalize`` or weakref callback) is
    on the stack: never a safe point, as Python swallows what it raises."""
    try:
        f: Any = _getframe(2)
    except ValueError:
        return False
    while f is not None:
        code = f.f_code
        if code.co_name == "__del__":
            return True
        if code.co_name == "__call__" and code.co_filename.endswith("weakref.py"):
            return True
        f = f.f_back
    return False


# ---------------------------------------------------------------------------------------
# Reports


def _warn(text: str) -> None:
    f = user_frame(2)
    if f is None:
        warnings.warn(text, LifetimeHazardWarning, stacklevel=3)
        return
    g = f.f_globals
    warnings.warn_explicit(
        text,
        LifetimeHazardWarning,
        f.f_code.co_filename,
        f.f_lineno,
        module=g.get("__name__", "__main__"),
        registry=g.setdefault("__warningregistry__", {}),
    )


# ---------------------------------------------------------------------------------------
# Threads started inside a region

# The dispatch mode stack is per thread: a thread started while a region tracks every op
# of the starting thread (a plain _Mode, not an always-on window) runs its target under
# that region too. threading.Thread.start is wrapped while any region is attached and
# restored when the last one detaches.
_thread_lock = threading.Lock()
_thread_users = 0
_thread_saved: list[Any] = []


def _follow_threads(delta: int) -> None:
    global _thread_users
    with _thread_lock:
        before = _thread_users
        _thread_users = max(0, before + delta)
        if before == 0 and _thread_users > 0:
            own = threading.Thread.__dict__.get("start")
            _thread_saved[:] = [own]
            orig = threading.Thread.start

            def start(self: threading.Thread) -> None:
                _wrap_run(self)
                return orig(self)

            start.__wrapped__ = orig  # type: ignore[attr-defined]
            start.__doc__ = orig.__doc__
            threading.Thread.start = start  # type: ignore[method-assign]
        elif before > 0 and _thread_users == 0 and _thread_saved:
            threading.Thread.start = _thread_saved.pop()  # type: ignore[method-assign]


def _followers() -> list[Tracker]:
    st = patches._tls
    if st.depth or not st.active:
        return []
    out = []
    for tr, mode in zip(st.active, st.modes, strict=True):
        if type(mode) is _Mode and not mode.suspended and tr._watching:
            out.append(tr)
    return out


def _wrap_run(th: threading.Thread) -> None:
    try:
        trs = _followers()
        if not trs or getattr(th, "_esper_followed", False):
            return
        run = th.run

        def run_followed() -> None:
            entered: list[Tracker] = []
            for tr in trs:
                try:
                    if tr._enter_thread():
                        entered.append(tr)
                except Exception as exc:
                    tr._note(exc, "thread start")
            try:
                run()
            finally:
                for tr in reversed(entered):
                    try:
                        tr._exit_thread()
                    except Exception as exc:
                        tr._note(exc, "thread end")

        th.run = run_followed  # type: ignore[method-assign]
        th._esper_followed = True  # type: ignore[attr-defined]
    except Exception:  # noqa: S110 - never break the program's thread start
        pass


# ---------------------------------------------------------------------------------------
# Compiled code and CUDA graphs inside a region

# A dispatch mode cannot see the kernels of a torch.compile'd function. While a region is
# attached, dynamo's stance is "force_eager": compiled functions run their Python eagerly,
# so that every op is tracked, and the report notes each such call. CUDA graph replays
# run captured kernels that no mode sees: each is counted as unseen work. Both restored
# when the last region detaches. Dynamo is not imported for this (it is slow to import):
# when it is not loaded yet, torch.compile is wrapped to apply the stance when called.
_compile_users = 0
_compile_saved: dict[str, Any] = {}
_EAGER_NOTE = "a torch.compile'd function ran eagerly, so that its ops were tracked"


def _follow_compiled(delta: int) -> None:
    global _compile_users
    with _thread_lock:
        before = _compile_users
        _compile_users = max(0, before + delta)
        try:
            if before == 0 and _compile_users > 0:
                _compiled_on()
            elif before > 0 and _compile_users == 0:
                _compiled_off()
        except Exception:  # noqa: S110 - never break the region for this
            pass


def _compiled_on() -> None:
    graph = getattr(torch.cuda, "CUDAGraph", None)
    replay = getattr(graph, "replay", None) if graph is not None else None
    if replay is not None and "replay" in graph.__dict__:

        def replay_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            _tell_all("_unseen", "CUDA graph replay")
            return replay(self, *args, **kwargs)

        replay_counted.__wrapped__ = replay  # type: ignore[attr-defined]
        _compile_saved["replay"] = replay
        graph.replay = replay_counted
    if sys.modules.get("torch._dynamo.eval_frame") is not None:
        _stance_on()
        return
    orig = torch.compile

    def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001 - torch.compile's name
        out = orig(*args, **kwargs)
        with _thread_lock:
            if _compile_users and "stance" not in _compile_saved:
                try:
                    _stance_on()
                except Exception:  # noqa: S110
                    pass
        return out

    compile.__wrapped__ = orig  # type: ignore[attr-defined]
    compile.__doc__ = orig.__doc__
    _compile_saved["compile"] = orig
    torch.compile = compile  # type: ignore[assignment]


def _stance_on() -> None:
    ef = sys.modules.get("torch._dynamo.eval_frame")
    if ef is None:
        return
    _compile_saved["stance"] = ef._stance
    torch.compiler.set_stance("force_eager")
    cfs = ef._callback_from_stance

    def callback_from_stance(callback: Any) -> Any:
        if callback is not None and callback is not False:
            _tell_all("_notes", _EAGER_NOTE)  # one call of a compiled function
        return cfs(callback)

    _compile_saved["cfs"] = cfs
    ef._callback_from_stance = callback_from_stance


def _compiled_off() -> None:
    ef = sys.modules.get("torch._dynamo.eval_frame")
    if "cfs" in _compile_saved and ef is not None:
        ef._callback_from_stance = _compile_saved.pop("cfs")
    if "stance" in _compile_saved and ef is not None:
        ef._stance = _compile_saved.pop("stance")
    if "compile" in _compile_saved:
        torch.compile = _compile_saved.pop("compile")
    if "replay" in _compile_saved:
        torch.cuda.CUDAGraph.replay = _compile_saved.pop("replay")
    _compile_saved.clear()


def _tell_all(table: str, what: str) -> None:
    """Counts ``what`` at the user's line for every tracker watching this thread."""
    st = patches._tls
    if st.depth or not st.active:
        return
    for tr in patches._targets(st.active):
        if tr._watching:
            tr._count(getattr(tr, table), what, 3)


# ---------------------------------------------------------------------------------------
# Public entry points


def track(on_hazard: str = "raise", *, cpu: str | None = None, timeline: Any = None) -> Tracker:
    """Tracks the ``with`` block on the current thread: ``with track() as t: ...``.

    ``on_hazard``: ``"raise"`` (:class:`LifetimeHazardError` at the first safe point,
    at the latest on exit), ``"warn"`` (:class:`LifetimeHazardWarning`) or ``"collect"``.
    ``cpu``: ``"device"`` (CPU tensors stand for device memory on virtual streams) or
    ``"host"``; default ``"device"`` without a GPU, ``"host"`` with one.
    ``timeline``: a :class:`esper_lifetimes.reports.Timeline` that records the region's
    engine calls, for ``reports.write_all`` (give it ``max_events`` to bound its memory).
    """
    return Tracker(on_hazard, cpu=cpu, timeline=timeline)


_checked: Tracker | None = None
_checked_lock = threading.Lock()
_exit_registered = False


def _register_exit() -> None:
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        import atexit

        atexit.register(_checked_at_exit)


def checked_tracker() -> Tracker:
    """The tracker shared by every ``@checked`` call (created on first use)."""
    global _checked
    tr = _checked
    if tr is None:
        with _checked_lock:
            tr = _checked
            if tr is None:
                tr = Tracker("raise")
                tr._shared = True
                tr._start()
                tr._state = "shared"
                _checked = tr
                _register_exit()
                patches.install_signal_guard()
    return tr


def reset_checked() -> None:
    """Forgets the shared ``@checked`` tracker and everything it watched (hazards not yet
    reported included: call :func:`flush_checked` first to have them)."""
    global _checked
    with _checked_lock:
        tr, _checked = _checked, None
    if tr is not None:
        tr._close()


def _engine_flush(tr: Tracker) -> None:
    if tr._eng is not None:
        try:
            tr._eng.flush()
        except Exception as exc:
            tr._note(exc, "flush")


def flush_checked() -> list[Hazard]:
    """A safe point for the ``@checked`` tracker, asked for: the engine takes its verdict
    on every pending free now (``Engine.flush()``), and the errors not yet reported go
    through the policy of the calls that registered their storages (``raise``:
    :class:`LifetimeHazardError`, ``warn``: a warning). Returns those errors (also under
    ``collect``). At interpreter exit the same happens, with what would be raised logged
    instead (logger ``esper_lifetimes``, ERROR, with the report)."""
    tr = _checked
    if tr is None or tr._eng is None:
        return []
    if patches._tls.active:
        raise RuntimeError("flush_checked() inside a tracked region or @checked call")
    before = tr._seen
    _engine_flush(tr)
    errors = [h for h in tr._eng.hazards(before) if h.severity == "error"]
    tls = tr._tls
    tls.policy = COLLECT  # the storages' own policies decide
    try:
        tr._safe_point()
    finally:
        tls.policy = None
    return errors


class _ExitReport(Exception):
    """Collects, as notes, the report of what a ``raise`` policy finds at exit."""


def _checked_at_exit() -> None:
    tr = _checked
    if tr is None or tr._eng is None:
        return
    try:
        _engine_flush(tr)
        sink = _ExitReport()
        tls = tr._tls
        tls.policy = COLLECT
        try:
            tr._safe_point(exc=sink)
        finally:
            tls.policy = None
        notes = getattr(sink, "__notes__", None)
        if notes:
            import logging

            logging.getLogger("esper_lifetimes").error(
                "hazards found after the last @checked call (reported at exit):\n%s",
                "\n".join(notes),
            )
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


def _call_checked(f: Callable[..., Any], policy: int, args: tuple, kwargs: dict) -> Any:
    if patches._tls.active:
        return f(*args, **kwargs)  # this thread is already tracked
    tr = checked_tracker()
    tls = tr._tls
    tls.policy = policy
    try:
        tr._attach()
        try:
            tr._safe_point()  # hazards found since the last call (late frees)
            result = f(*args, **kwargs)
        except (StopIteration, StopAsyncIteration):
            # one step of a generator or coroutine body (_checked_step) that finished:
            # its normal end, where a hazard raises
            tr._detach()
            tr._safe_point()
            raise
        except BaseException as exc:
            tr._detach()
            tr._safe_point(exc=exc)
            raise
        tr._detach()
        tr._safe_point()
        return result
    finally:
        tls.policy = None


# One resumption of a generator or coroutine body (send, throw, close) is one checked call:
# the body is tracked across its suspensions, and what runs between them (the consumer,
# the event loop, other tasks) is not.


def _drive(it: Any, policy: int) -> Any:
    """The generator that runs generator or awaitable ``it`` one checked step at a time
    and returns (``StopIteration.value``) what ``it`` returns."""
    send: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            if thrown is None:
                item = _call_checked(it.send, policy, (send,), {})
            else:
                exc, thrown = thrown, None
                item = _call_checked(it.throw, policy, (exc,), {})
        except StopIteration as stop:
            return stop.value
        try:
            send = yield item
        except GeneratorExit:
            close = getattr(it, "close", None)
            if close is not None:
                _call_checked(close, policy, (), {})
            raise
        except BaseException as exc:
            thrown = exc


_drive_awaitable = types.coroutine(_drive)


def _checked_wrapper(f: Any, policy: int, cfg: _Config) -> Any:
    if inspect.isasyncgenfunction(f):

        @functools.wraps(f)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            agen = f(*args, **kwargs)
            if not cfg.enabled:
                async for item in agen:  # noqa: UP028 - asend/athrow are not needed off
                    yield item
                return
            send: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    if thrown is None:
                        item = await _drive_awaitable(agen.asend(send), policy)
                    else:
                        exc, thrown = thrown, None
                        item = await _drive_awaitable(agen.athrow(exc), policy)
                except StopAsyncIteration:
                    return
                try:
                    send = yield item
                except GeneratorExit:
                    await _drive_awaitable(agen.aclose(), policy)
                    raise
                except BaseException as exc:
                    thrown = exc

        return agen_wrapper
    if inspect.iscoroutinefunction(f):

        @functools.wraps(f)
        async def coro_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not cfg.enabled:
                return await f(*args, **kwargs)
            return await _drive_awaitable(f(*args, **kwargs), policy)

        return coro_wrapper
    if inspect.isgeneratorfunction(f):

        @functools.wraps(f)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not cfg.enabled:
                return (yield from f(*args, **kwargs))
            return (yield from _drive(f(*args, **kwargs), policy))

        return gen_wrapper

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not cfg.enabled:
            return f(*args, **kwargs)
        return _call_checked(f, policy, args, kwargs)

    return wrapper


def checked(fn: F | None = None, *, on_hazard: str = "raise") -> Any:
    """Decorator: full tracking for the duration of each call.

    Storages registered during a call stay watched until freed, also after the call
    returns; hazards found later go through this policy at the next safe point (the next
    ``@checked`` call, :func:`flush_checked`, or at the latest interpreter exit). With
    tracking disabled the wrapper costs one attribute check.

    A generator function, ``async def`` or async generator is tracked across its
    suspensions: each resumption of its body is one checked call (the wrapper is of the
    same kind, so ``inspect`` still says what it is). Above ``@classmethod`` or
    ``@staticmethod`` it wraps the function inside and keeps the descriptor; anything
    else that is not callable is a ``TypeError`` at decoration.
    """
    policy = _policy(on_hazard)
    cfg = _config

    def deco(f: F) -> F:
        if isinstance(f, classmethod | staticmethod):
            inner = deco(f.__func__)
            return type(f)(inner)  # type: ignore[return-value]
        if not callable(f):
            raise TypeError(f"@checked needs a function (or a classmethod/staticmethod), not {f!r}")
        wrapper = _checked_wrapper(f, policy, cfg)
        wrapper.__esper_checked__ = True
        return wrapper  # type: ignore[no-any-return]

    if fn is not None:
        return deco(fn)
    return deco
