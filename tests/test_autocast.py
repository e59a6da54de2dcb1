"""Tracking changes no dtype under inference_mode + autocast (issue 10, item 19).

Under torch.inference_mode() a composite op (einsum, tensordot, ...; on CUDA also lstm)
reaches any dispatch mode whole, and its decomposition then runs below autocast: a plain
no-op TorchDispatchMode computes it in float32. The tracker decomposes such an op itself,
with the autocast that is on outside (esper_lifetimes/autocast.py)."""

from __future__ import annotations

import esper_lifetimes
import pytest
import torch
from esper_lifetimes import virtual
from torch.utils._python_dispatch import TorchDispatchMode


class _NoOp(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


A = torch.randn(4, 6, 8)
B = torch.randn(8, 5)
OPS = {
    "einsum": lambda: torch.einsum("bij,jk->bik", A, B),
    "tensordot": lambda: torch.tensordot(A, B, dims=1),
    "inner": lambda: torch.inner(A, B.t()),
    "multi_dot": lambda: torch.linalg.multi_dot([B.t(), B]),
}


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("name", sorted(OPS))
def test_a_plain_dispatch_mode_loses_autocast_under_inference_mode(name):
    # the torch behaviour the tracker works around (if torch fixes it, this fails: then
    # autocast.py can go)
    with torch.inference_mode(), _autocast():
        assert OPS[name]().dtype == torch.bfloat16
        with _NoOp():
            assert OPS[name]().dtype == torch.float32


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("region_first", [True, False])
def test_tracked_and_untracked_compute_the_same(name, region_first):
    with torch.inference_mode(), _autocast():
        ref = OPS[name]()
    if region_first:  # the region starts outside autocast, autocast is entered inside
        with esper_lifetimes.track("raise") as t, torch.inference_mode(), _autocast():
            got = OPS[name]()
    else:  # the region starts inside autocast
        with torch.inference_mode(), _autocast(), esper_lifetimes.track("raise") as t:
            got = OPS[name]()
    assert got.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(got, ref)
    assert t.errors == [] and t.diagnostics == []


def test_without_autocast_nothing_is_decomposed_and_results_match():
    with torch.inference_mode():
        ref = OPS["einsum"]()
        with esper_lifetimes.track("collect"):
            got = OPS["einsum"]()
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_the_decomposed_ops_are_tracked():
    side = virtual.Stream(name="side")
    with esper_lifetimes.track("collect") as t, torch.inference_mode(), _autocast():
        a = torch.randn(4, 6, 8)  # written on the default stream
        with virtual.stream(side):
            y = torch.einsum("bij,jk->bik", a, B)  # read on side: a race
    assert y.dtype == torch.bfloat16
    assert [h.kind for h in t.errors] == ["unsynced-access"]
    assert t.errors[0].use_site.endswith(f"test_autocast.py:{_line('read on side')}")


def _line(text: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if text in line and "def " not in line and "_line(" not in line:
                return i
    raise AssertionError(text)
