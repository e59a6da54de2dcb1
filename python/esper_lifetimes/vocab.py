"""The project's vocabulary, defined once: hazard kinds, engine operations, bulk codes,
hazard fields and the deduplication key.

Every other module reads these tables; none re-lists them. The hazard kinds come from
the compiled engine (``_core.KINDS``, built from the Rust ``Kind`` enum), and only from
there, the first time they are asked for; this module imports neither torch nor the
engine when it is imported, so the pytest plugin and the configuration parser can use
it for free.

The engine operations (:data:`OPS`) are the engine's mutating methods with their
arguments in parameter order: the trace format, the recording proxy
(:mod:`esper_lifetimes.recording`) and the reports' timeline are generated from them.
``tests/test_vocab.py`` asserts that they match the compiled ``Engine``'s signatures.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "KindInfo",
    "kinds",
    "kind",
    "kind_order",
    "Arg",
    "OpSpec",
    "OPS",
    "REQUIRED",
    "QUERIES",
    "COMPOSITES",
    "CONTROL",
    "Bulk",
    "BULK",
    "BULK_CODES",
    "HAZARD_FIELDS",
    "SITE_FIELDS",
    "dedup_key",
    "BadArgument",
    "coerce",
    "bind",
    "event_dict",
]

# --------------------------------------------------------------------------------------
# Hazard kinds
# --------------------------------------------------------------------------------------

# Presentation only: the colour each kind is drawn in (HTML report, legend).
COLORS: Final[dict[str, str]] = {
    "unsynced-free": "#e03131",
    "reuse-race": "#ae3ec9",
    "unwaited-allocation": "#0c8599",
    "unsynced-access": "#f76707",
    "host-read-before-copy": "#d6336c",
    "host-write-during-copy": "#5f3dc4",
    "redundant-record-stream": "#1c7ed6",
}
OTHER_COLOR: Final = "#495057"
# For a kind the engine knows and COLORS does not (yet): a new kind needs no edit here.
_SPARE_COLORS: Final = ("#2b8a3e", "#e8590c", "#862e9c", "#1098ad", "#a61e4d", "#5c940d")


def _color(name: str) -> str:
    import zlib

    return COLORS.get(name) or _SPARE_COLORS[zlib.crc32(name.encode()) % len(_SPARE_COLORS)]


@dataclass(frozen=True)
class KindInfo:
    """One hazard kind: what the engine says of it, and the colour reports draw it in."""

    name: str
    severity: str
    """``"error"`` or ``"advice"``."""
    title: str
    """One line: what went wrong."""
    hint: str
    """How to fix it, in general terms (reports may name the real tensor and stream)."""
    roles: tuple[tuple[str, str, str | None], ...]
    """(label, site field, stream-name field or None) of the lines a report shows."""
    color: str = OTHER_COLOR


def _role(item: Any) -> tuple[str, str, str | None]:
    if isinstance(item, Mapping):
        label = item.get("label", item.get("role"))
        return (str(label), str(item["site"]), item.get("stream"))
    label, site, *rest = item
    return (str(label), str(site), rest[0] if rest else None)


def _kind_info(d: Mapping[str, Any]) -> KindInfo:
    name = str(d["name"])
    return KindInfo(
        name=name,
        severity=str(d["severity"]),
        title=str(d["title"]),
        hint=str(d["hint"]),
        roles=tuple(_role(r) for r in d.get("roles", ())),
        color=_color(name),
    )


def _engine_kinds() -> Sequence[Mapping[str, Any]]:
    """``_core.KINDS``: the Rust ``Kind`` enum, the one list of hazard kinds."""
    from esper_lifetimes import _core

    return _core.KINDS


_kinds: tuple[KindInfo, ...] | None = None
_by_name: dict[str, KindInfo] = {}


def kinds() -> tuple[KindInfo, ...]:
    """Every hazard kind, errors first, in the engine's order (``Kind::ALL``)."""
    global _kinds
    if _kinds is None:
        source = _engine_kinds()
        infos = [_kind_info(d) for d in source]
        infos.sort(key=lambda k: k.severity != "error")  # stable: errors, then advice
        _by_name.update((k.name, k) for k in infos)
        _kinds = tuple(infos)
    return _kinds


def kind(name: str) -> KindInfo | None:
    """The kind called ``name``, or None for a kind this version does not know."""
    kinds()
    return _by_name.get(name)


def kind_order(name: str) -> tuple[int, str]:
    """Sort key of a kind in reports: the engine's order, unknown kinds last by name."""
    ks = kinds()
    for i, k in enumerate(ks):
        if k.name == name:
            return (i, name)
    return (len(ks), name)


def __getattr__(name: str) -> Any:
    # KIND_NAMES, ERROR_KINDS, FREE_KINDS: tuples of kind names, loaded on first use.
    if name == "KIND_NAMES":
        return tuple(k.name for k in kinds())
    if name == "ERROR_KINDS":
        return frozenset(k.name for k in kinds() if k.severity == "error")
    raise AttributeError(f"module 'esper_lifetimes.vocab' has no attribute {name!r}")


FREE_KINDS: Final = frozenset({"unsynced-free", "reuse-race"})
"""Kinds that a free (a storage's end of life) opens."""

# --------------------------------------------------------------------------------------
# Engine operations
# --------------------------------------------------------------------------------------

REQUIRED: Final[Any] = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
"""The default of an argument that must be given."""

# Argument types.
INT: Final = "int"  # a pointer, size, stream or event handle: a 64-bit integer
BOOL: Final = "bool"
SITE: Final = "site"  # None, a "path:line" string, or an id from Engine.intern
NAME: Final = "name"  # None or a string
RANGES: Final = "ranges"  # a flat list of ints: (ptr, nbytes) pairs


@dataclass(frozen=True)
class Arg:
    name: str
    type: str
    default: Any = REQUIRED


@dataclass(frozen=True)
class OpSpec:
    """One mutating Engine method: its name and arguments, in parameter order."""

    name: str
    args: tuple[Arg, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def has_site(self) -> bool:
        return bool(self.args) and self.args[-1].type == SITE


def _op(name: str, *args: tuple) -> OpSpec:
    return OpSpec(name, tuple(Arg(*a) for a in args))


_SITE_ARG = ("site", SITE, None)

OPS: Final[dict[str, OpSpec]] = {
    s.name: s
    for s in (
        _op("define_stream", ("stream", INT), ("name", NAME, None), ("virtual", BOOL, False)),
        _op("alloc", ("ptr", INT), ("nbytes", INT), ("stream", INT), _SITE_ARG),
        _op("adopt", ("ptr", INT), ("nbytes", INT), ("stream", INT), _SITE_ARG),
        _op(
            "access",
            ("ptr", INT),
            ("nbytes", INT),
            ("stream", INT),
            ("write", BOOL, False),
            _SITE_ARG,
        ),
        _op("launch", ("stream", INT), ("reads", RANGES), ("writes", RANGES), _SITE_ARG),
        _op("record_stream", ("ptr", INT), ("stream", INT), _SITE_ARG),
        _op("free", ("ptr", INT), _SITE_ARG),
        _op("flush"),
        _op("event_record", ("event", INT), ("stream", INT)),
        _op("event_wait", ("event", INT), ("stream", INT)),
        _op("stream_wait", ("waiter", INT), ("waited", INT)),
        _op("stream_synchronize", ("stream", INT)),
        _op("event_synchronize", ("event", INT)),
        _op("device_synchronize"),
        _op("stream_query", ("stream", INT), ("complete", BOOL)),
        _op("event_query", ("event", INT), ("complete", BOOL)),
        _op("forget_event", ("event", INT)),
        _op("copy_to_host", ("host_ptr", INT), ("nbytes", INT), ("stream", INT), _SITE_ARG),
        _op("copy_from_host", ("host_ptr", INT), ("nbytes", INT), ("stream", INT), _SITE_ARG),
        _op(
            "host_access",
            ("host_ptr", INT),
            ("nbytes", INT),
            ("write", BOOL, False),
            _SITE_ARG,
        ),
        _op("host_release", ("host_ptr", INT), ("nbytes", INT)),
    )
}
"""Every Engine method that changes its state (what a trace or a timeline records)."""

INTERN: Final = OpSpec("intern", (Arg("site", NAME),))
"""``Engine.intern(site)``: not an event; a recorder remembers the id's string."""

QUERIES: Final = (
    "hazards",
    "hazard_count",
    "error_count",
    "stats",
    "storage_at",
    "replay",
)
"""The other public Engine methods: results, and the bulk path."""

COMPOSITES: Final = {"alloc_write": ("alloc", "access")}
"""Engine methods that stand for several ops in one call (a hot path's shortcut). They
are not events: a recorder records the ops they stand for (``Recorder.alloc_write``)."""

CONTROL: Final = ("set_error_signal",)
"""Engine methods that configure how the engine tells its owner things; not events."""


@dataclass(frozen=True)
class Bulk:
    """One op code of the bulk path: a row ``[code, a, b, c]`` of ``Engine.replay``."""

    code: int
    name: str
    op: str
    slots: tuple[str, ...]
    """The op's arguments that a, b, c give, in that order."""
    fixed: tuple[tuple[str, Any], ...] = ()
    """Arguments the code itself sets (``write`` for READ and WRITE)."""

    def args(self, a: int, b: int, c: int) -> tuple:
        """The op's positional arguments for a row ``[code, a, b, c]``."""
        row = dict(zip(self.slots, (a, b, c), strict=False))
        row.update(self.fixed)
        return tuple(row.get(arg.name, arg.default) for arg in OPS[self.op].args)


BULK: Final[dict[int, Bulk]] = {
    b.code: b
    for b in (
        Bulk(0, "ALLOC", "alloc", ("ptr", "nbytes", "stream")),
        Bulk(1, "READ", "access", ("ptr", "nbytes", "stream"), (("write", False),)),
        Bulk(2, "WRITE", "access", ("ptr", "nbytes", "stream"), (("write", True),)),
        Bulk(3, "FREE", "free", ("ptr",)),
        Bulk(4, "RECORD_STREAM", "record_stream", ("ptr", "stream")),
        Bulk(5, "EVENT_RECORD", "event_record", ("event", "stream")),
        Bulk(6, "EVENT_WAIT", "event_wait", ("event", "stream")),
        Bulk(7, "STREAM_WAIT", "stream_wait", ("waiter", "waited")),
        Bulk(8, "STREAM_SYNC", "stream_synchronize", ("stream",)),
        Bulk(9, "EVENT_SYNC", "event_synchronize", ("event",)),
        Bulk(10, "DEVICE_SYNC", "device_synchronize", ()),
        Bulk(11, "ADOPT", "adopt", ("ptr", "nbytes", "stream")),
        Bulk(12, "FLUSH", "flush", ()),
    )
}
"""Bulk op codes (docs/ENGINE-API.md, "Bulk path"; the Rust ``Op::decode``)."""

BULK_CODES: Final[dict[str, int]] = {b.name: b.code for b in BULK.values()}
"""``"ALLOC"`` -> 0, ...: the constants of :mod:`esper_lifetimes.ops`."""

# --------------------------------------------------------------------------------------
# Argument rules: which Python values each argument type accepts
# --------------------------------------------------------------------------------------

I64_MIN: Final = -(2**63)
U64_MAX: Final = 2**64 - 1


class BadArgument(ValueError):
    """An argument :func:`coerce` refuses; the caller raises it as its own error class."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_numpy_bool(value: Any) -> bool:
    t = type(value)
    return t.__module__ == "numpy" and t.__name__ in ("bool", "bool_")


def _int(op: str, name: str, value: Any) -> int:
    if type(value) is int:
        v = value
    else:
        # bool is an int subclass, and numpy's bool has no __index__: both refused, as
        # ``alloc(True, ...)`` is a bug, never a pointer. numpy integer scalars pass.
        if isinstance(value, bool) or _is_numpy_bool(value):
            raise BadArgument(f"{op}: argument '{name}' must be an integer, not a bool")
        try:
            v = operator.index(value)
        except TypeError:
            raise BadArgument(
                f"{op}: argument '{name}' must be an integer, got {_type_name(value)} {value!r}"
            ) from None
    if not I64_MIN <= v <= U64_MAX:
        raise BadArgument(f"{op}: argument '{name}' = {v} is outside the 64-bit range")
    return v


def _text(op: str, name: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadArgument(
            f"{op}: argument '{name}' is not valid text ({exc.reason}: {value!r})"
        ) from None
    return value


_ARG_TYPES: Final[dict[str, tuple[str, ...]]] = {
    op: tuple(a.type for a in spec.args) for op, spec in OPS.items()
}


def coerce(op: str, values: Sequence[Any], *, site_ids: bool = True) -> tuple:
    """``values`` (all of ``op``'s arguments, in order) checked and made plain: numpy
    integer scalars become ints, numpy bools become bools, range lists become lists.

    The rule, the same for the engine, the recorder, the trace writer and the reader:
    integer arguments take ``int`` and numpy integer scalars, never ``bool``; flag
    arguments take ``bool`` and numpy bools, never ints; strings must be UTF-8 text (no
    lone surrogates). ``site_ids=False`` refuses interned site ids (a trace holds
    strings). Raises :class:`BadArgument`."""
    # Fast path: values that are already plain (the common case) are returned as they
    # are; about 1 us for an access, where the full check costs several.
    types = _ARG_TYPES[op]
    if len(values) == len(types):
        for t, v in zip(types, values):  # noqa: B905 (lengths checked)
            tv = type(v)
            if t is INT:
                if tv is int and I64_MIN <= v <= U64_MAX:
                    continue
            elif t is BOOL:
                if tv is bool:
                    continue
            elif t is RANGES:
                if (
                    tv is list
                    and not len(v) % 2
                    and all(type(x) is int and I64_MIN <= x <= U64_MAX for x in v)
                ):
                    continue
            elif v is None or (tv is str and v.isascii()):
                continue
            elif tv is int and t is SITE and site_ids:
                continue
            break
        else:
            return values if type(values) is tuple else tuple(values)
    return _coerce(op, values, site_ids)


def _coerce(op: str, values: Sequence[Any], site_ids: bool) -> tuple:
    # The full check, with the reason of a refusal.
    out = []
    for arg, value in zip(OPS[op].args, values, strict=True):
        t = arg.type
        if t == INT:
            value = _int(op, arg.name, value)
        elif t == BOOL:
            if type(value) is not bool:
                if not _is_numpy_bool(value):
                    raise BadArgument(
                        f"{op}: argument '{arg.name}' must be true or false, "
                        f"got {_type_name(value)} {value!r}"
                    )
                value = bool(value)
        elif t == RANGES:
            if not isinstance(value, (list, tuple)) or len(value) % 2:
                raise BadArgument(
                    f"{op}: argument '{arg.name}' must be a list of (ptr, nbytes) pairs "
                    f"flattened, got {_type_name(value)} {value!r}"
                )
            value = [_int(op, arg.name, v) for v in value]
        elif value is None:
            pass
        elif type(value) is str:
            value = _text(op, arg.name, value)
        elif t == SITE and site_ids and type(value) is int:
            pass
        else:
            raise BadArgument(
                f"{op}: argument '{arg.name}' must be a string or null, "
                f"got {_type_name(value)} {value!r}"
            )
        out.append(value)
    return tuple(out)


def bind(op: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple:
    """All of ``op``'s arguments in order, from a call's positional and keyword
    arguments, defaults filled in. Raises TypeError as a Python call would."""
    spec = OPS[op]
    if len(args) > len(spec.args):
        raise TypeError(f"{op}() takes at most {len(spec.args)} arguments ({len(args)} given)")
    values = list(args)
    given = dict(kwargs)
    for arg in spec.args[len(args) :]:
        if arg.name in given:
            values.append(given.pop(arg.name))
        elif arg.default is REQUIRED:
            raise TypeError(f"{op}() missing required argument '{arg.name}'")
        else:
            values.append(arg.default)
    if given:
        raise TypeError(f"{op}() got unexpected argument(s) {', '.join(map(repr, given))}")
    return tuple(values)


def event_dict(op: str, values: Sequence[Any]) -> dict[str, Any]:
    """One call as its trace-format object: ``op``, then the arguments that are not at
    their default (required ones always), by name."""
    obj: dict[str, Any] = {"op": op}
    for arg, value in zip(OPS[op].args, values, strict=True):
        if arg.default is REQUIRED or value != arg.default:
            obj[arg.name] = value
    return obj


# --------------------------------------------------------------------------------------
# Hazards
# --------------------------------------------------------------------------------------

HAZARD_FIELDS: Final = (
    "kind",
    "severity",
    "count",
    "ptr",
    "nbytes",
    "alloc_stream",
    "use_stream",
    "other_stream",
    "alloc_stream_name",
    "use_stream_name",
    "other_stream_name",
    "alloc_site",
    "use_site",
    "free_site",
    "other_site",
    "other_ptr",
    "other_nbytes",
    "live",
    "message",
)
"""The fields of a ``Hazard`` (and the keys of ``Hazard.to_dict()``), in order."""

SITE_FIELDS: Final = ("alloc_site", "use_site", "free_site", "other_site")


def dedup_key(h: Any) -> tuple:
    """The engine's deduplication key (Rust ``DedupKey``) of a hazard or its dict: one
    report per kind and sites; without any site, the storage and streams stand in. An
    ``unsynced-free`` is one mistake whichever allocation revealed it: its ``other_*``
    fields (that allocation) are not part of the key."""
    get = h.get if isinstance(h, Mapping) else lambda name: getattr(h, name, None)
    kind = get("kind")
    judged_at = kind == "unsynced-free"
    sites = tuple(None if judged_at and name == "other_site" else get(name) for name in SITE_FIELDS)
    if all(s is None for s in sites):
        other_stream = None if judged_at else get("other_stream")
        return (kind, *sites, get("ptr"), get("use_stream"), other_stream)
    return (kind, *sites)
