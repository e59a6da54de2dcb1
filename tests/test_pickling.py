"""Hazards and LifetimeHazardError cross process boundaries whole (multiprocessing)."""

from __future__ import annotations

import multiprocessing
import pickle

import esper_lifetimes as el
import pytest
from esper_lifetimes.tracking import LifetimeHazardError


def _race() -> el.Engine:
    e = el.Engine()
    e.define_stream(1, "D")
    e.define_stream(2, "s")
    e.alloc(0x1000, 64, 1, "train.py:10")
    e.access(0x1000, 64, 1, True, "train.py:11")
    e.access(0x1000, 64, 2, False, "train.py:12")
    return e


def test_hazard_pickles_equal_and_hashes_by_identity() -> None:
    e = _race()
    (h,) = e.hazards()
    back = pickle.loads(pickle.dumps(h))
    assert back == h and hash(back) == hash(h)
    assert back.to_dict() == h.to_dict()
    assert {h, back} == {h}
    e.access(0x1000, 64, 2, False, "train.py:12")  # a repeat: count grows, identity not
    (again,) = e.hazards()
    assert again.count == 2 and again == h
    other = _race()
    other.access(0x1000, 64, 1, True, "train.py:99")  # another site: another hazard
    assert other.hazards()[1] != h


def test_a_bad_pickled_hazard_is_a_clear_error() -> None:
    from esper_lifetimes import _core

    with pytest.raises(el.LifetimesError, match='unknown hazard kind "nonsense"'):
        _core._hazard_from_dict({**_race().hazards()[0].to_dict(), "kind": "nonsense"})
    d = _race().hazards()[0].to_dict()
    del d["use_site"]
    with pytest.raises(el.LifetimesError, match="use_site"):
        _core._hazard_from_dict(d)


def test_lifetime_hazard_error_pickles_with_its_hazards() -> None:
    err = LifetimeHazardError("report text", _race().hazards())
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is LifetimeHazardError
    assert str(back) == "report text"
    assert back.hazards == err.hazards


def _worker(_: int) -> None:
    e = _race()
    raise LifetimeHazardError(e.hazards()[0].message, e.hazards())


def test_error_from_a_pool_worker_reaches_the_parent_with_its_report() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool, pytest.raises(LifetimeHazardError) as info:
        pool.map(_worker, [0])
    assert [h.kind for h in info.value.hazards] == ["unsynced-access"]
    assert "train.py:12" in str(info.value)
