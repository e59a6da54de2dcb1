"""The pytest plugin: fail every test whose code leaves a CUDA stream hazard behind.

Installed with the package (entry point group ``pytest11``) and off by default. Switched
on for a whole run by ``--lifetimes`` (full tracking), ``--lifetimes=always-on``, or the
ini option ``lifetimes = full | always-on | off``; per test by
``@pytest.mark.lifetimes(mode=..., allow=[kinds])``. The fixture ``lifetimes`` gives a
test the tracker that watches it (and switches tracking on for that test).

Each tracked test runs in one tracking region, opened before its fixtures are set up and
closed after they are torn down and the garbage the test left is collected, so a storage
freed in teardown or at garbage collection is charged to the test that made it:

- an error-severity hazard found by the time the test body has returned (and its
  garbage is collected) fails the test; the failure text is the tracker's report: kind,
  streams, and the source lines of the allocation, the use and the free;
- one found during teardown or the final collection is an error at teardown of the same
  test;
- advice is listed in the terminal summary, never a failure;
- the frees still pending (the engine judges a free when its block can next be handed
  out) are judged when the test body returns (``Engine.flush()``);
- a test that calls ``pytest.skip()`` after leaving a hazard fails (a skipped test's
  report would never name it);
- storages that outlive their test (a module- or session-scoped fixture's, a cache's)
  keep its tracker watching, detached (*lingering*, at most 256 regions, oldest closed
  first): their frees are judged at the end of the test during which they happen (a
  module fixture's teardown: the module's last test) and charged to it; what is freed
  after the last test fails the run, in a summary section of its own (not under xdist,
  where each worker's last test takes it).

``--lifetimes`` takes an optional mode but never a path: ``pytest --lifetimes tests/`` is
read as ``--lifetimes=full tests/``.

With ``always-on``, one run-wide tracker (``esper_lifetimes.enable(mode="always-on")``)
samples windows of ops; the start of each test is a synchronization barrier where a
window may open (``--lifetimes-sample``, ini ``lifetimes_sample``; 1 by default in a test
run: a test is short, and at a production rate most tests would go unchecked), and a test
is charged with the hazards the run's tracker found, or found again, while it ran. The
summary says how many ops the windows checked, and how many tests had none checked.

Nothing heavy is imported until the plugin is switched on: with it off, this module uses
pytest and the standard library only (neither torch nor the compiled engine). An error
of the plugin itself is listed under "esper-lifetimes internal errors" in the terminal
summary and never fails a test.

Garbage collection. After the test body the plugin collects the young generations
(cheap); after teardown, a full ``gc.collect()`` (about 75 ms once torch is imported) runs
only when storages the test's tracker registered are still alive, since otherwise no
collection can free one.
"""

from __future__ import annotations

import argparse
import gc
import os
import traceback
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

from esper_lifetimes import vocab

__all__ = ["MODES", "LifetimesPlugin"]

MODES = ("off", "full", "always-on")
"""The values ``--lifetimes``, the ini option and the marker accept."""

_MARKER_HELP = (
    "lifetimes(mode='full'|'always-on'|'off', allow=[kinds]): esper-lifetimes tracking "
    "for this test: mode overrides --lifetimes; hazards of the allowed kinds are neither "
    "failures nor advice"
)


# ---------------------------------------------------------------------------------------
# Options


_MODE_SPELLINGS = {"always_on": "always-on", "alwayson": "always-on"}


def _mode_word(value: str) -> str | None:
    m = value.strip().lower()
    m = _MODE_SPELLINGS.get(m, m)
    return m if m in MODES else None


def _bare_flag_before_a_path(args: list[str]) -> bool:
    """Rewrites, in place, a bare ``--lifetimes`` followed by something that is not a
    mode (``pytest --lifetimes tests/``) as ``--lifetimes=full``, so that argparse does
    not take the path as the mode. True when it changed ``args``."""
    changed = False
    for i, a in enumerate(args):
        if a == "--":
            break
        if a == "--lifetimes" and i + 1 < len(args):
            nxt = args[i + 1]
            if not nxt.startswith("-") and _mode_word(nxt) is None:
                args[i] = "--lifetimes=full"
                changed = True
    return changed


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: Any, args: list[str]
) -> None:
    # Called with the very list pytest parses next (after addopts and PYTEST_ADDOPTS).
    if _bare_flag_before_a_path(args):
        import copy

        early_config.known_args_namespace = parser.parse_known_args(
            args, namespace=copy.copy(early_config.option)
        )


class _LifetimesAction(argparse.Action):
    """``--lifetimes`` with an optional MODE that never swallows a test path.

    ``--lifetimes`` alone, before ``-n 2`` or at the end: full. ``--lifetimes=MODE`` (or
    ``--lifetimes MODE``): that mode. ``--lifetimes tests/`` is rewritten to
    ``--lifetimes=full tests/`` before parsing (:func:`pytest_load_initial_conftests`).
    Any other value is kept, for the usage error that names it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            setattr(namespace, self.dest, self.const)
            return
        value = str(values)
        mode = _mode_word(value)
        if mode is not None:
            setattr(namespace, self.dest, mode)
            return
        setattr(namespace, self.dest, value)  # not a mode: _global_mode says so


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lifetimes", "esper-lifetimes: CUDA stream lifetime hazards")
    group.addoption(
        "--lifetimes",
        dest="lifetimes",
        nargs="?",
        const="full",
        default=None,
        metavar="MODE",
        action=_LifetimesAction,
        help=(
            "fail every test that leaves a CUDA stream hazard behind. MODE: full (the "
            "default when no value is given), always-on or off; overrides the ini option "
            "'lifetimes'. Every spelling works: --lifetimes, --lifetimes=always-on, "
            "--lifetimes tests/ (a path after it stays a path), --lifetimes -n 2."
        ),
    )
    group.addoption(
        "--lifetimes-allow",
        dest="lifetimes_allow",
        action="append",
        default=[],
        metavar="KIND",
        help="a hazard kind that never fails a test (repeatable; adds to the ini option)",
    )
    group.addoption(
        "--lifetimes-sample",
        dest="lifetimes_sample",
        default=None,
        metavar="P",
        help="always-on mode: the probability of tracking a window of ops at each "
        "synchronization (default in a test run: 1, every window: a test is short)",
    )
    parser.addini(
        "lifetimes",
        "esper-lifetimes mode for every test: full, always-on or off (the default)",
        default="off",
    )
    parser.addini(
        "lifetimes_allow",
        "esper-lifetimes: hazard kinds that never fail a test (space separated)",
        type="args",
        default=[],
    )
    group.addoption(
        "--lifetimes-emulate-cuda",
        dest="lifetimes_emulate_cuda",
        action="store_true",
        default=None,
        help="run the tests' torch.cuda code on a machine without a GPU "
        "(esper_lifetimes.emulate_cuda for the whole run; adds to the ini option)",
    )
    parser.addini(
        "lifetimes_emulate_cuda",
        "esper-lifetimes: emulate CUDA on the CPU for the whole run (true/false)",
        type="bool",
        default=False,
    )
    parser.addini(
        "lifetimes_sample",
        "esper-lifetimes always-on mode: probability of tracking a window at each synchronization",
        default="",
    )


def _global_mode(config: pytest.Config) -> str:
    value = config.getoption("lifetimes", None)
    where = "--lifetimes"
    if value is None:
        value = config.getini("lifetimes")
        where = "the ini option 'lifetimes'"
    mode = _mode_word(str(value)) or ("off" if not str(value).strip() else None)
    if mode is None:
        hint = ""
        if where == "--lifetimes" and (os.path.exists(str(value)) or "::" in str(value)):
            hint = f" ({value!r} looks like a test path: write --lifetimes=full before it)"
        raise pytest.UsageError(
            f"esper-lifetimes: {where} got {value!r}; expected one of {', '.join(MODES)}{hint}"
        )
    return mode


def _kinds(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        kinds = frozenset(str(k).strip() for k in value)
    except TypeError:
        raise pytest.UsageError(
            f"esper-lifetimes: {where} must be a list of hazard kinds, got {value!r}"
        ) from None
    if not kinds:
        return frozenset()  # nothing to check: the engine's list of kinds stays unloaded
    known = vocab.KIND_NAMES
    unknown = sorted(k for k in kinds if k not in known)
    if unknown:
        raise pytest.UsageError(
            f"esper-lifetimes: {where} names unknown hazard kind(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return kinds


def _sample(config: pytest.Config) -> float | None:
    value = config.getoption("lifetimes_sample", None)
    if value is None:
        value = config.getini("lifetimes_sample") or None
    if value is None:
        return None
    try:
        sample = float(value)
    except ValueError:
        sample = -1.0
    if not 0.0 <= sample <= 1.0:
        raise pytest.UsageError(
            f"esper-lifetimes: lifetimes_sample must be a probability in [0, 1], got {value!r}"
        )
    return sample


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    mode = _global_mode(config)
    allow = _kinds(
        [*config.getini("lifetimes_allow"), *(config.getoption("lifetimes_allow", None) or ())],
        "lifetimes_allow",
    )
    plugin = LifetimesPlugin(config, mode, allow, _sample(config))
    config.pluginmanager.register(plugin, "esper-lifetimes-plugin")
    if config.getoption("lifetimes_emulate_cuda", None) or config.getini("lifetimes_emulate_cuda"):
        plugin.emulate_cuda()  # before collection: skipif(not is_available()) sees it
    if mode != "off":
        plugin.backend(mode)  # switched on for the run: a usage error now if it cannot work


# ---------------------------------------------------------------------------------------
# The tracker, reached only once the plugin is switched on


def _import_package(mode: str) -> Any:
    try:
        import esper_lifetimes

        esper_lifetimes.track  # noqa: B018 - imports torch and the engine now
    except Exception as exc:  # torch missing, a broken build
        raise pytest.UsageError(
            f"esper-lifetimes: --lifetimes={mode} cannot start: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        _skip_test_runner_frames()
    except Exception:  # pragma: no cover - sites would name a line of pytest: cosmetic
        pass
    return esper_lifetimes


class _Backend:
    """``full``: one ``track(on_hazard="collect")`` region per test, with its own engine."""

    def __init__(self, mode: str, sample: float | None) -> None:
        self.mode = mode
        el = _import_package(mode)
        self._track = el.track
        self.enabled = el.is_enabled()

    def open(self) -> _Region:
        return _Region(self._track(on_hazard="collect"))

    def close(self) -> None:
        pass


class _AlwaysOnBackend(_Backend):
    """``always-on``: one run-wide tracker (``esper_lifetimes.enable(mode="always-on")``),
    started at the first tracked test; each test is charged with the hazards it found (or
    found again) between the start of its setup and the end of its teardown."""

    def __init__(self, mode: str, sample: float | None) -> None:
        self.mode = mode
        el = _import_package(mode)
        self._enable = el.enable
        self._sample = sample
        self._run: Any = None
        self.enabled = el.is_enabled()

    def open(self) -> _Region:
        if self._run is None:
            # A test is short: in a test run every window is tracked unless told otherwise
            # (at a production rate most tests would go unchecked).
            sample = 1.0 if self._sample is None else self._sample
            self._run = self._enable(mode=self.mode, sample=sample)
        # The start of a test is a barrier: the window of ops it opens (with probability
        # `sample`) then belongs to this test, not to whatever ran before it.
        barrier = getattr(self._run, "barrier", None) or getattr(self._run, "_barrier", None)
        if barrier is not None:
            barrier()
        return _Window(self._run)

    def close(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.stop()


def _heal_patches() -> None:
    from esper_lifetimes import patches

    heal = getattr(patches, "heal", None)
    if heal is not None:
        heal()


def _skip_test_runner_frames() -> None:
    """Makes the tracker's source sites skip the frames of pytest, pluggy and xdist, as it
    skips torch's: a storage freed by the plugin's collection after the test, or when
    pytest drops a fixture value, has no user line rather than a line of pytest."""
    import importlib.util

    from esper_lifetimes import sites

    ignore = getattr(sites, "ignore_file", None)
    if ignore is None:
        return
    for name in ("_pytest", "pytest", "pluggy", "xdist", "execnet"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for top in spec.submodule_search_locations:
            for folder, _dirs, files in os.walk(top):
                for f in files:
                    if f.endswith(".py"):
                        ignore(os.path.join(folder, f))


class _Region:
    """One ``track(on_hazard="collect")`` region around one test."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm
        # The test's own track() regions own their events (and their deliberate hazards).
        cm.yield_to_inner = True
        self.tracker = cm.__enter__()
        self._seen = 0
        self.closed = False

    def new_hazards(self) -> list[Any]:
        """The hazards found since the last call, in the order found."""
        hazards = list(self.tracker.hazards)
        new = hazards[self._seen :]
        self._seen = len(hazards)
        return new

    def close(self) -> bool:
        """Ends the test's region. True when the tracker *lingers*: storages it watches
        are still alive (a module- or session-scoped fixture's, a cache's), so it stays
        watching them, detached, and their frees are judged later (:meth:`sweep`)."""
        if self.closed:
            return False
        self.closed = True
        tr = self.tracker
        if tr.active and self.live_storages():
            tr.linger()
            self.flush()
            return True
        self._cm.__exit__(None, None, None)
        return False

    def flush(self) -> None:
        self.tracker.flush()

    def sweep(self, final: bool = False) -> bool:
        """A lingering region: takes the verdict on the frees seen since the last sweep.
        True when it is done (nothing it watches is alive, or ``final``): closed then."""
        self.flush()
        if final or not self.live_storages():
            self.tracker.close()
            return True
        return False

    def report(self, hazards: list[Any]) -> str:
        return str(self.tracker.report(hazards))

    def live_storages(self) -> int:
        """How many storages the tracker registered are still alive (1 when unknown)."""
        try:
            return int(self.tracker.engine.stats()["live_storages"])
        except Exception:
            return 1

    def diagnostics(self) -> list[str]:
        return list(getattr(self.tracker, "diagnostics", ()) or ())


def _free_key(h: Any) -> tuple[Any, ...] | None:
    key = (h.alloc_site, h.use_site, h.free_site)
    return None if key == (None, None, None) else key


class _Window(_Region):
    """A test's share of the run-wide always-on tracker.

    The run's engine outlives the test, and so do the freed ranges it remembers: a
    ``reuse-race`` whose free was already reported as an ``unsynced-free`` before this
    test began is the consequence of an earlier test's hazard (its memory handed out again
    to this one), and is not charged to this test.
    """

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.closed = False
        hazards = list(tracker.hazards)
        self._counts = [h.count for h in hazards]
        self._earlier_frees = {
            _free_key(h) for h in hazards if h.kind == "unsynced-free" and _free_key(h)
        }
        self._diags = len(self._all_diagnostics())
        count = getattr(tracker, "ops_checked", None)
        self._ops0 = int(count()) if count is not None else 0

    def new_hazards(self) -> list[Any]:
        """Hazards first found, or found again (a higher count), since the last call."""
        hazards = list(self.tracker.hazards)
        old = self._counts
        new = [h for i, h in enumerate(hazards) if i >= len(old) or h.count > old[i]]
        self._counts = [h.count for h in hazards]
        earlier = self._earlier_frees
        return [h for h in new if not (h.kind == "reuse-race" and _free_key(h) in earlier)]

    def close(self) -> bool:
        """The end of the test: the run's engine takes its verdict on the frees still
        pending (a module fixture's teardown frees, judged with this test)."""
        self.closed = True
        self.flush()
        return False

    def live_storages(self) -> int:
        return 0  # no full collection per test: always-on stays cheap

    def ops_checked(self) -> int:
        """Ops of this test's windows that the run's tracker checked."""
        count = getattr(self.tracker, "ops_checked", None)
        if count is None:
            return -1
        return int(count()) - self._ops0

    def _all_diagnostics(self) -> list[str]:
        return list(getattr(self.tracker, "diagnostics", ()) or ())

    def diagnostics(self) -> list[str]:
        return self._all_diagnostics()[self._diags :]


# ---------------------------------------------------------------------------------------
# Per test


@dataclass
class _TestState:
    mode: str
    allow: frozenset[str]
    region: _Region | None = None
    tracked: bool = False
    errors: int = 0
    advice: list[list[str]] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)
    call_exc: BaseException | None = None
    ops: int = -1  # always-on: ops of the test that were checked (-1: full tracking)


_STATE = pytest.StashKey[_TestState]()
_MAX_LINGERING = 256  # regions kept watching past their test; the oldest is closed first


def _internal_text(where: str, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return f"{where}: {type(exc).__name__}: {exc}\n{tb}"


def _advice_entry(h: Any) -> list[str]:
    """``[key, text]``: advice with the same kind and sites is listed once."""
    key = " ".join(map(str, vocab.dedup_key(h)))
    return [key, h.message]


class LifetimesPlugin:
    """The hooks; registered by ``pytest_configure`` whatever the mode (cheap when off)."""

    def __init__(
        self,
        config: pytest.Config,
        mode: str,
        allow: frozenset[str],
        sample: float | None = None,
    ) -> None:
        self.config = config
        self.mode = mode
        self.allow = allow
        self.sample = sample
        self._backends: dict[str, _Backend] = {}
        # Gathered from the test reports (here, or from the xdist workers).
        self.tracked = 0
        self.failed = 0
        self.advice: dict[str, tuple[str, list[str]]] = {}  # key -> (text, nodeids)
        self.internal: list[str] = []
        self.ops = 0  # always-on: ops checked over every tracked test
        self.unsampled = 0  # always-on: tracked tests of which no op was checked
        # Regions of earlier tests whose storages are still alive (held by a module- or
        # session-scoped fixture, a cache): their frees are judged at each later test's
        # end, and charged to that test; oldest first, bounded.
        self._lingering: list[tuple[_Region, str]] = []
        self.after_last: list[str] = []  # hazards found after the last test

    # -- modes ------------------------------------------------------------------------

    def backend(self, mode: str) -> _Backend:
        b = self._backends.get(mode)
        if b is None:
            cls = _AlwaysOnBackend if mode == "always-on" else _Backend
            b = self._backends[mode] = cls(mode, self.sample)
        return b

    def _resolve(self, item: pytest.Item) -> _TestState:
        mode = self.mode
        allow = self.allow
        explicit = False
        marker = item.get_closest_marker("lifetimes")
        if marker is not None:
            m = marker.kwargs.get("mode", marker.args[0] if marker.args else None)
            if m is not None:
                mode = str(m).strip().lower()
                explicit = True
                if mode not in MODES:
                    raise pytest.UsageError(
                        f"esper-lifetimes: @pytest.mark.lifetimes(mode={m!r}): expected one "
                        f"of {', '.join(MODES)}"
                    )
            allow = allow | _kinds(marker.kwargs.get("allow"), "@pytest.mark.lifetimes(allow=)")
        if mode == "off" and not explicit and "lifetimes" in getattr(item, "fixturenames", ()):
            mode = "full"  # asking for the tracker switches tracking on for the test
        return _TestState(mode, allow)

    def pytest_report_header(self, config: pytest.Config) -> str | None:
        if self.mode == "off":
            return None
        line = f"esper-lifetimes: {self.mode} tracking of every test"
        if self.mode == "always-on":
            line += f" (sample {1.0 if self.sample is None else self.sample})"
        if self.allow:
            line += f", allowed: {', '.join(sorted(self.allow))}"
        b = self._backends.get(self.mode)
        if b is not None and not b.enabled:
            line += " (disabled by ESPER_LIFETIMES: nothing is tracked)"
        return line

    # -- the three phases -------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        usage: str | None = None
        try:
            state = self._resolve(item)
            if state.mode != "off":
                backend = self.backend(state.mode)
        except pytest.UsageError as exc:
            # A bad marker (or one asking for a mode this build lacks) is the test's own
            # error: its setup fails, saying why, once the other plugins' setup has run.
            usage = str(exc)
            state = _TestState("off", frozenset())
        item.stash[_STATE] = state
        if state.mode != "off":
            try:
                state.region = backend.open()
                state.tracked = True
            except Exception as exc:
                state.internal.append(_internal_text(f"{item.nodeid}: opening the region", exc))
        result = yield
        if usage is not None:
            pytest.fail(usage, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        state = item.stash.get(_STATE, None)
        if state is None or state.region is None:
            return (yield)
        try:
            result = yield
        except BaseException as exc:
            # Its locals live on in the traceback: they are released after teardown.
            state.call_exc = exc
            text = self._check(item, state, collect=False)
            if text:
                if isinstance(exc, pytest.skip.Exception):
                    # a skipped test's report sections are never shown: the hazard
                    # would be counted and never named. A hazard is not skipped.
                    pytest.fail(
                        f"{text}\n(The test then called pytest.skip({str(exc)!r}): the "
                        "hazard it left behind before that still fails it.)",
                        pytrace=False,
                    )
                item.add_report_section("call", "esper-lifetimes", text)
            raise
        text = self._check(item, state, collect=True)
        if text:
            pytest.fail(text, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, Any]:
        state = item.stash.get(_STATE, None)
        if state is None or state.region is None:
            return (yield)
        try:
            result = yield
        except BaseException:
            text = self._finish(item, state)
            if text:
                item.add_report_section("teardown", "esper-lifetimes", text)
            raise
        text = self._finish(item, state)
        if text:
            pytest.fail(text, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "teardown":
            state = item.stash.get(_STATE, None)
            if state is not None and (state.tracked or state.internal):
                # Plain data, so that it travels with the report from an xdist worker.
                report.esper_lifetimes = {  # type: ignore[attr-defined]
                    "mode": state.mode,
                    "tracked": state.tracked,
                    "errors": state.errors,
                    "advice": list(state.advice),
                    "internal": list(state.internal),
                    "ops": state.ops,
                }
        return report

    # -- checks -----------------------------------------------------------------------

    def _check(self, item: pytest.Item, state: _TestState, collect: bool) -> str | None:
        """After the test body: the failure text for the error hazards found, or None."""
        region = state.region
        assert region is not None
        try:
            if collect:
                gc.collect(1)  # the young generations: cheap; the full collection waits
            # the end of the test's own code: the frees still pending are judged now (with
            # the clocks of this moment), so that the body's hazards fail the test itself
            # rather than its teardown
            region.flush()
            return self._verdict(state, region, region.new_hazards(), "")
        except Exception as exc:
            state.internal.append(_internal_text(f"{item.nodeid}: checking after the call", exc))
            return None

    def _finish(self, item: pytest.Item, state: _TestState) -> str | None:
        """After teardown: collects the test's garbage, closes its region; the failure
        text for the error hazards found since the body returned, or None."""
        region = state.region
        assert region is not None
        state.region = None
        try:
            self._release_test(item, state)
            gc.collect(1)
            if region.live_storages():
                gc.collect()
            lingers = region.close()
            _heal_patches()  # a wrapper a monkeypatch put back after the region covered it
            if isinstance(region, _Window):
                state.ops = region.ops_checked()
            text = self._verdict(
                state,
                region,
                region.new_hazards(),
                " (found during teardown or at garbage collection after the test)",
            )
            for d in region.diagnostics():
                state.internal.append(f"{item.nodeid}: tracker diagnostic: {d}")
            texts = [text] if text else []
            texts.extend(self._sweep(item, state))
            if lingers:
                self._lingering.append((region, item.nodeid))
                while len(self._lingering) > _MAX_LINGERING:
                    old, _ = self._lingering.pop(0)
                    old.sweep(final=True)
            return "\n\n".join(texts) or None
        except Exception as exc:
            state.internal.append(_internal_text(f"{item.nodeid}: closing the region", exc))
            try:
                region.close()
            except Exception:
                pass
            return None

    def _sweep(self, item: pytest.Item | None, state: _TestState | None) -> list[str]:
        """Verdicts of the lingering regions of earlier tests: what the current test (or,
        with ``item`` None, the end of the run) freed of their storages."""
        texts: list[str] = []
        keep = []
        final = item is None
        for region, nodeid in self._lingering:
            try:
                done = region.sweep(final)
                hazards = region.new_hazards()
            except Exception as exc:
                self.internal.append(_internal_text(f"{nodeid}: lingering region", exc))
                continue
            if not done:
                keep.append((region, nodeid))
            if not hazards:
                continue
            when = f" (storages registered while {nodeid} ran, freed " + (
                "during this test or its teardown)" if not final else "after the last test)"
            )
            st = state if state is not None else _TestState("full", self.allow)
            text = self._verdict(st, region, hazards, when)
            if text:
                texts.append(text)
        self._lingering = keep
        return texts

    @staticmethod
    def _release_test(item: pytest.Item, state: _TestState) -> None:
        """Drops what pytest still holds of the test after teardown, so that its tensors
        die inside its region: fixture values (``item.funcargs``, cleared by pytest only
        after the teardown hooks) and, for a failed test, its frames' locals (kept by the
        traceback in ``sys.last_traceback``)."""
        funcargs = getattr(item, "funcargs", None)
        if isinstance(funcargs, dict):
            funcargs.clear()
        exc, state.call_exc = state.call_exc, None
        if exc is not None:
            tb = exc.__traceback__
            while tb is not None:
                frame = tb.tb_frame
                try:
                    frame.clear()
                    # Python < 3.13 caches a dict of the locals on the frame (pytest
                    # filled it when it formatted the traceback); reading f_locals now
                    # syncs it with the cleared frame, dropping its references.
                    frame.f_locals  # noqa: B018
                except RuntimeError:  # a frame still running (not the test's)
                    pass
                tb = tb.tb_next

    def _verdict(
        self, state: _TestState, region: _Region, hazards: list[Any], when: str
    ) -> str | None:
        errors = []
        for h in hazards:
            if h.kind in state.allow:
                continue
            if h.severity == "error":
                errors.append(h)
            else:
                state.advice.append(_advice_entry(h))
        if not errors:
            return None
        state.errors += len(errors)
        n = len(errors)
        first = ", ".join(
            dict.fromkeys(f"{h.kind} at {h.use_site or h.other_site or '?'}" for h in errors)
        )
        lines = [
            f"stream hazard{'s' * (n != 1)} left behind: {first}",
            "",
            region.report(errors).rstrip(),
            "",
            f"esper-lifetimes: this test left {n} stream hazard{'s' * (n != 1)} behind{when}.",
        ]
        if any(h.free_site is None and h.kind in vocab.FREE_KINDS for h in errors):
            lines.append(
                "A free without a source line happened where no line of yours was running: "
                "when the test function returned (its locals), when pytest dropped a fixture "
                "value, or at garbage collection."
            )
        kinds = ", ".join(dict.fromkeys(repr(h.kind) for h in errors))
        lines.append(f"If that is intended: @pytest.mark.lifetimes(allow=[{kinds}])")
        return "\n".join(lines)

    # -- results (on the xdist controller too) ----------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "esper_lifetimes", None)
        if not isinstance(data, dict):
            return
        if data.get("tracked"):
            self.tracked += 1
        if data.get("errors"):
            self.failed += 1
        ops = data.get("ops", -1)
        if isinstance(ops, int) and ops >= 0:
            self.ops += ops
            if ops == 0:
                self.unsampled += 1
        for key, text in data.get("advice", ()):
            self.advice.setdefault(key, (text, []))[1].append(report.nodeid)
        self.internal.extend(data.get("internal", ()))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: Any) -> None:
        """The end of the run: the frees of what earlier tests left alive (module globals,
        caches) are judged now; an error hazard among them fails the run."""
        if not self._lingering:
            return
        try:
            gc.collect()
            texts = self._sweep(None, None)
        except Exception as exc:
            self.internal.append(_internal_text("end of the run", exc))
            return
        if texts:
            self.after_last.extend(texts)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for b in self._backends.values():
            try:
                b.close()
            except Exception:  # pragma: no cover - the run is over
                pass
        em, self._emulation = getattr(self, "_emulation", None), None
        if em is not None:
            em.__exit__(None, None, None)

    def emulate_cuda(self) -> None:
        """``--lifetimes-emulate-cuda``: CUDA emulated on the CPU for the whole run."""
        try:
            from esper_lifetimes.emulate import emulate_cuda
        except Exception as exc:  # torch missing, a broken build
            raise pytest.UsageError(
                f"esper-lifetimes: --lifetimes-emulate-cuda cannot start: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        em = emulate_cuda()
        em.__enter__()
        self._emulation = em

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.advice:
            tr.write_sep("=", "esper-lifetimes advice (not failures)", yellow=True)
            for line, nodeids in self.advice.values():
                more = f" and {len(nodeids) - 1} more" if len(nodeids) > 1 else ""
                tr.write_line(f"{line}")
                tr.write_line(f"    in {nodeids[0]}{more}")
        if self.internal:
            tr.write_sep("=", "esper-lifetimes internal errors", red=True)
            tr.write_line(
                "Errors of the esper-lifetimes plugin, not of your tests: no test failed "
                "because of them, and the tests they name may have gone unchecked."
            )
            for text in self.internal:
                tr.write_line(text)
        if self.after_last:
            tr.write_sep("=", "esper-lifetimes: hazards found after the last test", red=True)
            for text in self.after_last:
                tr.write_line(text)
        if self.tracked:
            msg = f"esper-lifetimes: {self.tracked} test{'s' * (self.tracked != 1)} tracked"
            if self.mode == "always-on" or self.ops:
                msg += f" (always-on: {self.ops} op{'s' * (self.ops != 1)} checked"
                if self.unsampled:
                    msg += (
                        f"; {self.unsampled} test{'s' * (self.unsampled != 1)} with no op checked"
                    )
                    if self.sample is not None and self.sample < 1:
                        msg += f" at sample {self.sample}: raise --lifetimes-sample"
                msg += ")"
            if self.failed:
                msg += f", {self.failed} with stream hazards"
            if self.after_last:
                msg += ", hazards after the last test"
            tr.write_line(msg)


# ---------------------------------------------------------------------------------------
# The fixture


@pytest.fixture
def lifetimes(request: pytest.FixtureRequest) -> Any:
    """The tracker watching this test (``.hazards``, ``.errors``, ``.report()``).

    Asking for it switches full tracking on for the test when the run has it off. It is
    ``None`` under ``@pytest.mark.lifetimes(mode="off")``. Hazards still fail the test
    unless allowed: to assert on a hazard, allow its kind with the marker. A free is
    judged when its block can next be handed out: call ``lifetimes.engine.flush()`` to
    have the pending ones judged before asserting.
    """
    state = request.node.stash.get(_STATE, None)
    if state is None or state.region is None:
        return None
    return state.region.tracker
