"""The vocabulary (esper_lifetimes.vocab) agrees with the compiled engine: its hazard
kinds with ``_core.KINDS``, its operations with ``Engine``'s method signatures, its bulk
codes with ``Engine.replay``, its hazard fields with ``Hazard.to_dict()``, its dedup key
with the engine's; and it is the one rule for the numbers every entry point accepts."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

el = pytest.importorskip("esper_lifetimes")
from esper_lifetimes import _core, ops, vocab  # noqa: E402

D, S = 0, 7
X, Y = 0x7F00_0000_0000, 0x7F00_0001_0000
N = 4096

ENGINE_KINDS = _core.KINDS


def _missing(op: str) -> bool:
    return not hasattr(_core.Engine, op)


def test_importing_vocab_loads_neither_torch_nor_the_engine():
    code = (
        "import sys, esper_lifetimes.vocab as v; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert 'esper_lifetimes._core' not in sys.modules, '_core'; "
        "assert v.OPS['alloc'].names == ('ptr', 'nbytes', 'stream', 'site')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- kinds ----------------------------------------------------------------------------


def test_kinds_come_from_the_engine_in_its_order_errors_first():
    names = [k.name for k in vocab.kinds()]
    assert names == [d["name"] for d in ENGINE_KINDS]
    severities = [k.severity for k in vocab.kinds()]
    assert severities == sorted(severities, key=lambda s: s != "error")


def test_every_kind_has_a_title_a_hint_roles_and_its_own_colour():
    ks = vocab.kinds()
    assert "unwaited-allocation" in {k.name for k in ks}
    assert {k.severity for k in ks} == {"error", "advice"}
    for k in ks:
        assert k.title and k.hint.endswith("."), k.name
        assert k.color != vocab.OTHER_COLOR, k.name
        assert k.roles, k.name
        for _label, site, stream in k.roles:
            assert site in vocab.SITE_FIELDS, (k.name, site)
            assert stream is None or stream in vocab.HAZARD_FIELDS, (k.name, stream)
    assert len({k.color for k in ks}) == len(ks)
    assert set(vocab.COLORS) <= {k.name for k in ks}  # no colour of a kind that is gone
    assert vocab._color("some-new-kind") in vocab._SPARE_COLORS  # a new kind needs none
    assert vocab.kind("no-such-kind") is None
    assert vocab.kind_order("no-such-kind") == (len(ks), "no-such-kind")


# ---- operations -----------------------------------------------------------------------


def _params(method) -> list[tuple[str, bool]]:
    """(name, has a default) of a compiled method's parameters, self left out."""
    sig = inspect.signature(method)
    return [
        (p.name, p.default is not inspect.Parameter.empty)
        for p in list(sig.parameters.values())[1:]
    ]


@pytest.mark.parametrize("op", sorted(vocab.OPS))
def test_each_op_has_the_engine_methods_parameters(op):
    if _missing(op):
        pytest.skip(f"Engine.{op} is not in this build (the lead's engine rebuild adds it)")
    spec = vocab.OPS[op]
    expected = [(a.name, a.default is not vocab.REQUIRED) for a in spec.args]
    assert _params(getattr(_core.Engine, op)) == expected
    assert getattr(_core.Engine, op).__text_signature__.startswith("($self")


def test_every_public_engine_method_is_an_op_a_query_or_intern():
    public = {m for m in dir(_core.Engine) if not m.startswith("_")}
    known = set(vocab.OPS) | set(vocab.QUERIES) | {vocab.INTERN.name}
    known |= set(vocab.COMPOSITES) | set(vocab.CONTROL)
    for name, parts in vocab.COMPOSITES.items():
        assert set(parts) <= set(vocab.OPS), name  # stands for ops a trace can hold
    assert public - known == set()
    assert known - public <= {"adopt", "flush"}  # until the rebuild
    assert _params(_core.Engine.intern) == [("site", False)]


def _row_scenario() -> list[list[int]]:
    return [
        [ops.ALLOC, X, N, D],
        [ops.WRITE, X, N, D],
        [ops.EVENT_RECORD, 3, D, 0],
        [ops.READ, X, N, S],
        [ops.EVENT_WAIT, 3, S, 0],
        [ops.STREAM_WAIT, S, D, 0],
        [ops.RECORD_STREAM, X, D, 0],
        [ops.FREE, X, 0, 0],
        [ops.ADOPT, Y, N, S],
        [ops.READ, Y, N, D],
        [ops.FREE, Y, 0, 0],
        [ops.FLUSH, 0, 0, 0],
        [ops.STREAM_SYNC, S, 0, 0],
        [ops.EVENT_SYNC, 3, 0, 0],
        [ops.ALLOC, X, N, S],
        [ops.READ, X, N, D],
        [ops.FREE, X, 0, 0],
        [ops.DEVICE_SYNC, 0, 0, 0],
    ]


def test_bulk_codes_do_what_the_named_ops_do():
    rows = _row_scenario()
    if _missing("adopt"):
        rows = [r for r in rows if r[0] not in (ops.ADOPT, ops.FLUSH) and r[1] != Y]
    assert {r[0] for r in rows} >= set(vocab.BULK) - {ops.ADOPT, ops.FLUSH}
    bulk = el.Engine()
    assert bulk.replay(np.array(rows, dtype=np.int64)) == len(rows)
    named = el.Engine()
    for code, a, b, c in rows:
        spec = vocab.BULK[code]
        getattr(named, spec.op)(*spec.args(a, b, c))
    assert [h.to_dict() for h in bulk.hazards()] == [h.to_dict() for h in named.hazards()]
    assert bulk.hazards(), "the scenario should find hazards"
    assert bulk.stats() == named.stats()


def test_an_unknown_bulk_code_is_refused_by_the_engine():
    code = max(vocab.BULK) + 1
    with pytest.raises(el.InvalidArgumentError):
        el.Engine().replay(np.array([[code, 0, 0, 0]], dtype=np.int64))


def test_ops_module_names_the_vocabulary_codes():
    assert ops.NAMES == {code: b.name for code, b in vocab.BULK.items()}
    for code, name in ops.NAMES.items():
        assert getattr(ops, name) == code
    assert sorted(vocab.BULK) == list(range(len(vocab.BULK)))


def test_bulk_args_fill_defaults_in_parameter_order():
    assert vocab.BULK[ops.WRITE].args(X, N, S) == (X, N, S, True, None)
    assert vocab.BULK[ops.READ].args(X, N, S) == (X, N, S, False, None)
    assert vocab.BULK[ops.FREE].args(X, 0, 0) == (X, None)
    assert vocab.BULK[ops.STREAM_WAIT].args(S, D, 0) == (S, D)
    assert vocab.BULK[ops.FLUSH].args(0, 0, 0) == ()


# ---- hazards --------------------------------------------------------------------------


def _hazardous_engine() -> el.Engine:
    e = el.Engine()
    e.alloc(X, N, D, "v.py:1")
    e.access(X, N, S, False, "v.py:2")
    e.free(X, "v.py:3")
    e.alloc(X, N, D, "v.py:4")  # the pending free is judged here (or at once, before)
    e.access(X, N, D, True, "v.py:5")
    e.access(X, 64, S, False, "v.py:6")  # unsynced-access
    e.access(X, 64, S, False, "v.py:6")  # no new hazard
    if hasattr(e, "flush"):
        e.flush()
    return e


def test_hazard_fields_are_the_to_dict_keys_and_attributes():
    hs = _hazardous_engine().hazards()
    assert hs
    for h in hs:
        assert tuple(h.to_dict()) == vocab.HAZARD_FIELDS
        for name in vocab.HAZARD_FIELDS:
            assert getattr(h, name) == h.to_dict()[name]


def test_dedup_key_tells_apart_exactly_the_hazards_the_engine_keeps_apart():
    e = _hazardous_engine()
    hs = e.hazards()
    keys = [vocab.dedup_key(h) for h in hs]
    assert len(set(keys)) == len(keys)
    assert keys == [vocab.dedup_key(h.to_dict()) for h in hs]
    # the same sites on another storage: the engine counts, the key matches the kept one
    e.alloc(Y, N, D, "v.py:4")
    e.access(Y, N, D, True, "v.py:5")
    e.access(Y, 64, S, False, "v.py:6")
    again = e.hazards()
    assert [vocab.dedup_key(h) for h in again] == keys
    assert sum(h.count for h in again) > sum(h.count for h in hs)


def test_site_less_hazards_are_keyed_by_storage_and_streams():
    base = {"kind": "unsynced-access", "alloc_site": None, "use_site": None}
    base |= {"free_site": None, "other_site": None, "use_stream": 1, "other_stream": 2}
    assert vocab.dedup_key(base | {"ptr": 1}) != vocab.dedup_key(base | {"ptr": 2})
    sited = base | {"use_site": "a.py:1"}
    assert vocab.dedup_key(sited | {"ptr": 1}) == vocab.dedup_key(sited | {"ptr": 2})
    free = {**sited, "kind": "unsynced-free"}
    assert vocab.dedup_key(free | {"other_site": "b.py:1"}) == vocab.dedup_key(
        free | {"other_site": "c.py:9"}
    )


# ---- the accepted numbers -------------------------------------------------------------


def test_coerce_takes_numpy_integers_and_refuses_bools_for_integers():
    assert vocab.coerce("alloc", (np.int64(X), np.uint32(N), np.int8(0), None)) == (
        X,
        N,
        0,
        None,
    )
    assert all(type(v) is int for v in vocab.coerce("alloc", (np.int64(X), N, 0, None))[:3])
    for bad in (True, np.bool_(True), 1.0, "1", None):
        with pytest.raises(vocab.BadArgument, match="'ptr'"):
            vocab.coerce("alloc", (bad, N, 0, None))
    with pytest.raises(vocab.BadArgument, match="outside the 64-bit range"):
        vocab.coerce("free", (2**64, None))


def test_coerce_takes_bools_and_numpy_bools_for_flags_never_ints():
    assert vocab.coerce("access", (X, N, 0, np.bool_(True), None))[3] is True
    for bad in (1, 0, np.int64(1), None):
        with pytest.raises(vocab.BadArgument, match="'write'"):
            vocab.coerce("access", (X, N, 0, bad, None))


def test_coerce_refuses_text_that_is_not_utf8_and_site_ids_where_strings_are_needed():
    with pytest.raises(vocab.BadArgument, match="not valid text"):
        vocab.coerce("alloc", (X, N, 0, "a\udc80.py:1"))
    with pytest.raises(vocab.BadArgument, match="'name'"):
        vocab.coerce("define_stream", (S, "\ud800", False))
    assert vocab.coerce("alloc", (X, N, 0, 3))[3] == 3
    with pytest.raises(vocab.BadArgument, match="string or null"):
        vocab.coerce("alloc", (X, N, 0, 3), site_ids=False)
    assert vocab.coerce("launch", (S, (np.int64(X), 8), [], None))[1] == [X, 8]
    with pytest.raises(vocab.BadArgument, match="pairs"):
        vocab.coerce("launch", (S, [X], [], None))


def test_the_engine_follows_the_same_number_rule():
    e = el.Engine()
    e.alloc(np.int64(X), np.int32(N), np.uint64(D))  # numpy integers are accepted
    e.access(X, N, D, np.bool_(True))
    with pytest.raises(el.InvalidArgumentError):
        e.access(X, N, D, 1)
    try:
        e.alloc(True, N, D)
    except el.InvalidArgumentError:
        pass
    else:
        pytest.skip("this build accepts bool for ptr (the lead's rebuild refuses it)")
    for call in (lambda: e.alloc(Y, True, D), lambda: e.alloc(Y, N, False)):
        with pytest.raises(el.InvalidArgumentError):
            call()
    assert e.storage_at(Y) is None


# ---- the stub -------------------------------------------------------------------------


def test_the_stubs_literal_kinds_and_stats_keys_are_the_engines():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(_core.__file__).with_name("_core.pyi").read_text(encoding="utf-8"))
    aliases = {
        node.target.id: node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    literal = aliases["_KindName"]
    assert isinstance(literal, ast.Subscript)
    names = [elt.value for elt in literal.slice.elts]
    want = [k.name for k in vocab.kinds()]
    block = "_KindName: TypeAlias = Literal[\n" + "".join(f'    "{n}",\n' for n in want) + "]"
    assert names == want, f"the stub's kinds are not the engine's; in _core.pyi put:\n{block}"
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    stats = [s.target.id for s in classes["Stats"].body if isinstance(s, ast.AnnAssign)]
    assert stats == list(el.Engine().stats())
    fields = [s.target.id for s in classes["HazardDict"].body if isinstance(s, ast.AnnAssign)]
    assert tuple(fields) == vocab.HAZARD_FIELDS
    props = [
        f.name
        for f in classes["Hazard"].body
        if isinstance(f, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "property" for d in f.decorator_list)
    ]
    assert tuple(props) == vocab.HAZARD_FIELDS


def test_the_recorders_methods_and_the_enginelike_protocol_follow_the_ops():
    from esper_lifetimes import recording

    for op, spec in vocab.OPS.items():
        expected = [(a.name, a.default is not vocab.REQUIRED) for a in spec.args]
        assert _params(getattr(recording.Recorder, op)) == expected, op
        assert _params(getattr(recording.EngineLike, op)) == expected, op
    protocol = {
        name
        for name, value in vars(recording.EngineLike).items()
        if callable(value) and not name.startswith("_")
    }
    assert protocol == (
        set(vocab.OPS) | set(vocab.QUERIES) | {"intern"} | set(vocab.COMPOSITES)
    ) | set(vocab.CONTROL)


def test_the_engine_refuses_a_non_native_bulk_array_that_the_recorder_converts():
    from esper_lifetimes.recording import Recorder

    rows = np.array([[ops.ALLOC, X, 16, D]], dtype=">i8")
    with pytest.raises(el.InvalidArgumentError, match="byte order"):
        el.Engine().replay(rows)
    seen = []
    rec = Recorder(lambda op, args: seen.append((op, args)))
    assert rec.replay(rows) == 1
    assert rec.storage_at(X) == (X, 16, D)
    assert seen == [("alloc", (X, 16, D, None))]


def test_the_engine_refuses_a_site_that_is_not_text_with_its_own_error():
    e = el.Engine()
    with pytest.raises(el.InvalidArgumentError, match="site must be valid text"):
        e.alloc(X, N, D, "a\udc80.py:1")
    assert e.storage_at(X) is None
    with pytest.raises(el.InvalidArgumentError, match="site must be valid text"):
        e.intern("\ud800")
    with pytest.raises(el.InvalidArgumentError, match="name must be valid text"):
        e.define_stream(1, "s\udc80")


def test_a_recorder_records_a_composite_as_the_events_it_stands_for():
    from esper_lifetimes import recording

    seen: list[tuple[str, tuple]] = []
    r = recording.Recorder(lambda op, args: seen.append((op, args)))
    r.alloc_write(X, N, D, "a.py:1")
    assert [op for op, _ in seen] == list(vocab.COMPOSITES["alloc_write"])
    assert seen[1][1] == (X, N, D, True, "a.py:1")  # the whole write, same site
    assert r.engine.stats()["live_storages"] == 1
