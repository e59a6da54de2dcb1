"""Torch-level verdicts of SEMANTICS.md version 2 (issue 9): blocking copies synchronize,
metadata-only arguments are not reads, results fresh by storage identity, memory shared
by several storages, copy against copy on pinned memory.

Each body runs on virtual streams and, unchanged, on CUDA (``B``; the CUDA runs are
skipped without a GPU), asserting the exact kinds and the tagged source lines.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tag_of, verdict

N = 1 << 14


def _only(tracker, kind):
    hs = [h for h in tracker.hazards if h.kind == kind]
    assert len(hs) == 1, tracker.report()
    return hs[0]


# ---------------------------------------------------------------------------------------
# Item 4: a host/device copy without non_blocking=True synchronizes the current stream.
# The side stream s fills x; the default stream then reads x with no wait. Only the
# host's wait for s after a blocking copy on s orders that read.

COPIES = ["copy_h2d", "copy_d2h", "to_device", "to_host"]


def _copy_on_current_stream(B, how, non_blocking, pinned, host_out):
    if how == "copy_h2d":
        dst = B.empty(N)
        dst.copy_(pinned, non_blocking=non_blocking)
        return dst
    if how == "copy_d2h":
        host_out.copy_(B.ones(N), non_blocking=non_blocking)
        return host_out
    if how == "to_device":
        return B.to_device(pinned, non_blocking)
    return B.to_host(B.ones(N), non_blocking)


@pytest.mark.parametrize("how", COPIES)
def test_a_blocking_copy_synchronizes_the_current_stream(B, how):
    s = B.Stream("s")
    pinned = B.pin(torch.ones(N))
    host_out = B.pin(torch.zeros(N))
    with B.track() as t:
        with B.stream(s):
            x = B.randn(N)
            r = _copy_on_current_stream(B, how, False, pinned, host_out)
        y = x * 2  # the host waited for s after the copy: ordered
    assert t.hazards == [], t.report()
    del r, y


@pytest.mark.parametrize("how", COPIES)
def test_a_non_blocking_copy_does_not_synchronize(B, how):
    s = B.Stream("s")
    pinned = B.pin(torch.ones(N))
    host_out = B.pin(torch.zeros(N))
    with B.track() as t:
        with B.stream(s):
            x = B.randn(N)  # @write
            r = _copy_on_current_stream(B, how, True, pinned, host_out)
        y = x * 2  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert tag_of(_only(t, "unsynced-access").other_site) == "write"
    del r, y


def test_torch_tensor_from_data_is_a_blocking_copy(B):
    s = B.Stream("s")
    with B.track() as t:
        with B.stream(s):
            x = B.randn(N)
            lit = B.tensor([1.0, 2.0, 3.0])  # torch.tensor(data, device=...)
        y = x * 2
    assert t.hazards == [], t.report()
    del lit, y


def test_without_the_blocking_copy_the_read_races(B):
    # the twin of the tests above: the same body with no copy at all
    s = B.Stream("s")
    with B.track() as t:
        with B.stream(s):
            x = B.randn(N)  # @write
        y = x * 2  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    del y


@pytest.mark.cuda
@pytest.mark.parametrize("how", ["cuda", "to", "to_inference", "cpu_to", "copy_into_pageable"])
def test_cuda_blocking_copies_synchronize_the_current_stream(how):
    s = torch.cuda.Stream()
    src = torch.ones(N)  # pageable host memory
    import esper_lifetimes

    with esper_lifetimes.track("collect", cpu="host") as t:
        with torch.cuda.stream(s):
            x = torch.randn(N, device="cuda")
            if how == "cuda":
                r = src.cuda()
            elif how == "to":
                r = src.to("cuda")
            elif how == "to_inference":
                with torch.inference_mode():
                    r = src.to("cuda")
            elif how == "cpu_to":
                r = x.to("cpu")
            else:
                r = torch.empty(N)
                r.copy_(x)
        y = x * 2
    assert t.hazards == [], t.report()
    del r, y


@pytest.mark.cuda
@pytest.mark.parametrize("how", ["cuda", "to", "to_inference"])
def test_cuda_non_blocking_copies_from_pinned_memory_do_not_synchronize(how):
    import esper_lifetimes

    s = torch.cuda.Stream()
    src = torch.ones(N).pin_memory()
    with esper_lifetimes.track("collect", cpu="host") as t:
        with torch.cuda.stream(s):
            x = torch.randn(N, device="cuda")  # @write
            if how == "cuda":
                r = src.cuda(non_blocking=True)
            elif how == "to":
                r = src.to("cuda", non_blocking=True)
            else:
                with torch.inference_mode():
                    r = src.to("cuda", non_blocking=True)
        y = x * 2  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    del r, y
