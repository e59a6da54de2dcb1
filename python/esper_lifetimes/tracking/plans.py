"""Op plans: what one aten op reads, writes and allocates, read once from its schema.

A plan is built the first time the dispatch mode sees an ``OpOverload`` and cached by
the op's id. It lists the tensor arguments the op reads, those it writes
(``Tensor(a!)``), the view inputs that touch no bytes (``Tensor(a)``), the arguments
that supply only metadata (the ``*_like`` and ``new_*`` families), and which returns are
fresh storages. Ops that need more than their schema (copies, ``.item()``,
``torch.tensor``, pinning, ``resize_``, ops that may or may not copy) carry a
``special`` code that :mod:`esper_lifetimes.tracking.apply` handles; other modules model
ops of their own through :func:`register_special` (the c10d collectives).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = [
    "Plan",
    "PLANS",
    "SPECIAL",
    "HANDLERS",
    "SKIP_OPS",
    "NO_WRITE_OPS",
    "make_plan",
    "build_plan",
    "register_special",
]

GENERIC, SKIP, LIFT, SCALAR, COPY_, TO_COPY, PIN, RESIZE, MAYBE, UNSEEN = range(10)

# Ops that touch no bytes although their schema says they read a tensor (or that
# esper_lifetimes itself calls while a tracker's mode is active).
SKIP_OPS = frozenset(
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
NO_WRITE_OPS = frozenset(
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
# Ops other modules model (register_special), by the code they put in SPECIAL:
# code -> fn(tracker, plan, args, kwargs, out, site, vh).
HANDLERS: dict[int, Callable[..., None]] = {}
SPECIAL = {
    "aten::lift_fresh": LIFT,
    "aten::_local_scalar_dense": SCALAR,
    "aten::copy_": COPY_,
    "aten::_to_copy": TO_COPY,
    "aten::_pin_memory": PIN,
    "aten::resize_": RESIZE,
}


class Plan:
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
        self.alias_i = -1  # MAYBE: the argument the result may alias
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
PLANS: dict[int, Plan] = {}
SKIP_PLAN = Plan("<skip>", SKIP)


def make_plan(func: Any) -> Plan:
    try:
        plan = build_plan(func)
    except Exception:
        # a higher-order op or an op without a schema: the mode cannot see what it
        # touches (its inner ops run with the mode popped); counted as unseen work
        try:
            name = str(getattr(func, "name", lambda: func)())
        except Exception:
            name = repr(func)
        plan = Plan(name, UNSEEN)
    if plan is SKIP_PLAN:
        plan = Plan("<skip>", SKIP)
    plan.func = func
    PLANS[id(func)] = plan
    try:
        func._esper_plan = plan  # the dispatch mode's fast path (one attribute read)
    except Exception:  # an operator object that takes no attributes: PLANS only
        pass
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


def build_plan(func: Any) -> Plan:
    schema = func._schema
    name = schema.name
    if name in SKIP_OPS or _is_predicate(schema):
        return SKIP_PLAN
    plan = Plan(name, SPECIAL.get(name, GENERIC))
    meta = _metadata_args(func, schema)
    maybe = plan.special == GENERIC and _may_alias(func, schema)
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
    plan.write_out = name not in NO_WRITE_OPS
    if maybe and plan.alias_i >= 0:
        plan.special = MAYBE
        return plan
    if plan.special == GENERIC and not pos and not kw and not plan.fresh:
        return SKIP_PLAN
    return plan


def register_special(code: int, handler: Callable[..., None], names: Iterable[str]) -> None:
    """Ops another module models (:mod:`esper_lifetimes.distributed`: the c10d
    collectives): every op in ``names`` gets plan code ``code``, run by
    ``handler(tracker, plan, args, kwargs, out, site, stream)`` after the op. Plans
    already built for those ops are dropped, so the next call rebuilds them."""
    if code < 1000:
        raise ValueError(f"codes below 1000 are the tracker's own, not {code}")
    HANDLERS.setdefault(code, handler)
    for name in names:
        SPECIAL.setdefault(name, code)
    for k, p in list(PLANS.items()):
        if SPECIAL.get(p.name) == code:
            del PLANS[k]
            if getattr(p.func, "_esper_plan", None) is p:
                del p.func._esper_plan
