"""A signal that lands in the tracker's own callbacks reaches the program (issue 10,
item 5). Each case runs in a subprocess: signals, sys.unraisablehook and the helper
thread are process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("esper_lifetimes.tracking")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ESPER_LIFETIMES"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_real_sigints_during_frees_always_stop_the_loop():
    # Many storages die at once (one `del xs`): most of the time is spent in the tracker's
    # weakref callbacks, so many of the SIGINTs land there. Each must end its trial.
    out = _run(
        """
        import os, signal, threading
        import torch
        import esper_lifetimes as el
        from esper_lifetimes import virtual as v

        TRIALS = 40
        S = v.Stream(name="s")
        caught = lost = 0
        for trial in range(TRIALS):
            sent = threading.Event()

            def fire():
                os.kill(os.getpid(), signal.SIGINT)
                sent.set()

            timer = threading.Timer(0.005 + 0.002 * (trial % 9), fire)
            after = 0
            try:
                with el.track("collect"):
                    timer.start()
                    while True:
                        xs = [torch.empty(16) for _ in range(300)]
                        with v.stream(S):
                            for x in xs[:50]:
                                x.add_(1)
                        del x, xs
                        if sent.is_set():
                            after += 1
                            if after > 2000:  # a delivered signal stops it long before
                                lost += 1
                                break
            except KeyboardInterrupt:
                caught += 1
            timer.join()
        print("caught", caught, "lost", lost)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["caught", "40", "lost", "0"], out.stderr[-3000:]


_BROKEN_FREE = """
import torch
import esper_lifetimes as el
from esper_lifetimes import virtual as v


class RaisingFree:
    # The engine, except that the next free raises what a signal handler would.
    def __init__(self, eng, exc):
        self._eng, self._exc = eng, exc

    def free(self, *args):
        exc, self._exc = self._exc, None
        if exc is not None:
            raise exc
        return self._eng.free(*args)

    def __getattr__(self, name):
        return getattr(self._eng, name)
"""


def test_a_keyboard_interrupt_inside_the_free_callback_reaches_the_program():
    out = _run(
        _BROKEN_FREE
        + """
with el.track("collect") as tr:
    tr._eng = RaisingFree(tr._eng, KeyboardInterrupt())
    try:
        x = torch.empty(64)
        del x  # the weakref callback: the KeyboardInterrupt is raised inside it
        n = 0
        for _ in range(50_000_000):  # plain Python: no op, no safe point
            n += 1
        print("lost")
    except KeyboardInterrupt:
        print("interrupted")
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["interrupted"]
    assert "Exception ignored" not in out.stderr


def test_a_system_exit_inside_the_free_callback_is_raised_at_the_next_safe_point():
    out = _run(
        _BROKEN_FREE
        + """
s = v.Stream(name="s")
try:
    with el.track("collect") as tr:
        tr._eng = RaisingFree(tr._eng, SystemExit(7))
        x = torch.empty(64)
        del x  # swallowed by Python if raised from the callback
        print("after the free")
        s.synchronize()  # a patched call: the next safe point
        print("not reached")
except SystemExit as exc:
    print("exit", exc.code)
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["after", "the", "free", "exit", "7"]
