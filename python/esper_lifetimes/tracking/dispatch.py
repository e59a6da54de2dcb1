"""The dispatch mode: every aten op a tracked thread runs, fed to its tracker.

:meth:`Mode.__torch_dispatch__` is the tracker's hot path. The common cases of a plain op
(a known storage standing for device memory on a virtual stream, read or written whole;
a fresh output) are inlined here and cost one engine call each; everything else goes
through the tracker's methods (:mod:`~esper_lifetimes.tracking.storages`,
:mod:`~esper_lifetimes.tracking.apply`). ``benchmarks/bench_tracking.py`` is the judge
of what this path costs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esper_lifetimes import LifetimesError, patches, virtual
from esper_lifetimes import autocast as _autocast
from esper_lifetimes.sites import SiteMark, user_codes
from esper_lifetimes.tracking import memory
from esper_lifetimes.tracking.memory import VDEFAULT, VIRTUAL, Ref, host_marks
from esper_lifetimes.tracking.plans import GENERIC, PLANS, SKIP, make_plan

if TYPE_CHECKING:
    from esper_lifetimes.tracking.tracker import Tracker

__all__ = ["Mode"]

_Tensor = torch.Tensor
_SEQ = (list, tuple)  # not `list | tuple`: that builds a UnionType per isinstance call
_dynamo_compiling = torch.compiler.is_dynamo_compiling
_getframe = sys._getframe


class Mode(TorchDispatchMode):
    """Feeds every aten op to one tracker."""

    supports_higher_order_operators = True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Torch wraps __torch_dispatch__ in a dynamo-disabling wrapper that costs more
        # than the whole tracker (measured ~15 us per op). Instead dynamo is told once
        # never to compile the handler (patches.never_compiled, below the class).
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
        # The current virtual stream of the thread the mode is pushed on (modes are per
        # thread: Tracker._push_mode, AlwaysOnTracker._open_window). Read through this
        # cell, not the threading.local: ~450 instructions less per op.
        self.vcur = virtual.thread_stream()
        patches.never_compiled(Mode.__torch_dispatch__.__code__)  # again: cheap, and a
        # dynamo reset of its code caches cannot have undone it since

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, C901
        if kwargs is None:
            kwargs = {}
        if self.suspended or (_ask_dynamo and _dynamo_compiling()):
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
        # without kwargs, no dict is built and merged for the call (most ops have none)
        out = func(*args, **kwargs) if kwargs else func(*args)
        try:
            # the op's plan, cached on the OpOverload itself: one attribute read, where
            # a lookup by id(func) cost a call and a dict probe per op
            plan = func._esper_plan
        except AttributeError:
            plan = PLANS.get(id(func))
            if plan is None:
                plan = make_plan(func)
        sp = plan.special
        if sp == SKIP:
            return out  # a view or metadata op: no bytes, no engine call
        tr = self.tracker
        if sp == GENERIC:
            # The hot path, inlined: the common cases (a known storage standing for device
            # memory on a virtual stream, read or written whole; a fresh output; inside an
            # always-on window, an input allocated before it) cost no Python call but the
            # engine's; everything else goes through Tracker._touch and Tracker._fresh.
            try:
                # The site: the first frame outside torch and esper_lifetimes
                # (SiteTable.here, inlined). Frame 0 is this one, 1 torch's caller.
                f = _getframe(1)
                m = f.f_trace
                if m.__class__ is SiteMark and m.table is tr._sites:
                    site = m.site  # a frame an earlier walk went through
                else:
                    cid = id(f.f_code)
                    if cid in user_codes:  # torch called straight from user code
                        site = tr._site_ids.get((cid << 24) + f.f_lasti)
                        if site is None:
                            site = tr._sites.here_frame(f)
                    else:
                        site = tr._sites.from_frame(f)
                del f, m
                if tr._cpu_device:  # as in ApplyMixin._apply (inlined on purpose)
                    vs = self.vcur.stream
                    if vs is None:
                        vs = VDEFAULT
                    vs._pending = True  # the op is work on the virtual stream
                    vh = vs.handle
                else:
                    vh = None
                recs = tr._recs
                access = tr._access
                adopt = tr._adopt_unseen
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
                        if ref is None:
                            if not adopt:
                                # not seen allocated (an always-on window's inputs from
                                # before it): not tracked (StorageMixin._new_ref, inlined)
                                continue
                        elif ref.kind == VIRTUAL:
                            nb = a.nbytes
                            if nb == ref.nbytes and nb:
                                # the same handle object in the common case: no
                                # compare of two multi-digit ints
                                if ref.astream is not vh and ref.astream != vh:
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
                            and key not in host_marks
                            and not (memory.emulating and getattr(st, "_esper_cuda", None) is None)
                        ):
                            # a fresh storage on the virtual stream: register, then write
                            # (StorageMixin._new_ref and _touch, inlined on purpose)
                            ref = Ref(st, tr._on_free_cb)
                            ref.key = key
                            ref.kind = VIRTUAL
                            ref.ptr = p = st.data_ptr()
                            ref.nbytes = nbytes = st.nbytes()
                            ref.astream = vh
                            ref.multi = False
                            if tr._shared:
                                ref.policy = tr._current_policy()
                            recs[key] = ref
                            ref.registered = False
                            if nbytes and p:
                                if plan.write_out and out.nbytes == nbytes:
                                    # the common fresh output: allocated and written
                                    # whole, one engine call
                                    try:
                                        tr._alloc_write(p, nbytes, vh, site)
                                        ref.registered = True
                                    except LifetimesError:
                                        tr._engine_alloc(ref, vh, site)
                                        if ref.registered:
                                            access(p, nbytes, vh, True, site)
                                else:
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
                tr.note(exc, plan.name)
        else:
            try:
                tr._apply(plan, args, kwargs, out)
            except Exception as exc:
                tr.note(exc, plan.name)
        if tr._err_signal:  # the engine recorded an error during the op
            tr.safe_point()
        return out


# Dynamo runs the handler as it is (and all it calls) wherever its frame hook is active:
# ops that a compiled function runs eagerly are tracked, at no cost per op. Where this
# torch cannot be told so, the handler asks dynamo on every op and hands the op straight
# to torch while dynamo traces it.
_ask_dynamo = not patches.never_compiled(Mode.__torch_dispatch__.__code__)
