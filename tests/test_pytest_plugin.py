"""The pytest plugin (``esper_lifetimes.pytest_plugin``), driven through ``pytester``.

Each test writes a small test suite whose tests use virtual streams (so everything runs on
the CPU), runs pytest on it in a subprocess (the tracker patches torch process-wide, and
the no-torch-import guarantee needs a fresh interpreter), and checks the outcome of every
inner test and the text pytest printed.
"""

from __future__ import annotations

import re
import textwrap

import pytest

pytest_plugins = ["pytester"]

pytest.importorskip("torch")
pytest.importorskip("esper_lifetimes.tracking")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs see neither the package's own switch nor a disabled autoload."""
    monkeypatch.delenv("ESPER_LIFETIMES", raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)


# The P1 pattern of SEMANTICS.md: x is allocated on the default stream, read on a side
# stream, and freed with nothing ordering that read before the default stream's future
# work. Lines ending in "# @tag" are found again by _site().
PREAMBLE = """\
import pytest
import torch
from esper_lifetimes import virtual

N = 1024
"""

BUGGY = """
def test_unsynced_free():
    side = virtual.Stream(name="side")
    x = torch.randn(N)  # @alloc
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        y = x * 2  # @use
    del x  # @free
    assert y.shape == (N,)
"""

FIXED = """
def test_record_stream_fixes_it():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        y = x * 2
    x.record_stream(side)
    del x
    assert y.shape == (N,)
"""

ADVICE = """
def test_redundant_record_stream():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        y = x * 2
    x.record_stream(side)
    x.record_stream(side)  # @again
    del x
    assert y.shape == (N,)
"""


def _bug(name: str, decorator: str = "", args: str = "", extra: str = "") -> str:
    """The P1 bug as a test called ``name``."""
    return textwrap.dedent(
        f"""
        {decorator}
        def {name}({args}):
            side = virtual.Stream(name="side")
            x = torch.randn(N)
            side.wait_stream(virtual.current_stream())
            with virtual.stream(side):
                y = x * 2
            del x
            {extra}
        """
    )


def _write(pytester: pytest.Pytester, name: str, *parts: str) -> str:
    """Writes ``PREAMBLE + parts`` as ``name.py``; returns the file's text as written."""
    path = pytester.makepyfile(**{name: PREAMBLE + "\n".join(parts)})
    return path.read_text()


def _site(name: str, text: str, tag: str) -> str:
    """``"name.py:LINE"`` of the line tagged ``# @tag``."""
    for i, line in enumerate(text.splitlines(), 1):
        if line.rstrip().endswith(f"# @{tag}"):
            return f"{name}.py:{i}"
    raise AssertionError(f"no line tagged @{tag}")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", *args, timeout=240)


def _outcomes(result: pytest.RunResult) -> dict[str, str]:
    """``{test name: PASSED | FAILED | ERROR | ...}`` from ``-v`` lines (an ERROR at
    teardown of a passed test shows as ``PASSED+ERROR``)."""
    out: dict[str, str] = {}
    for line in result.outlines:
        m = re.match(
            r"^(?:\[gw\d+\] \[ *\d+%\] )?(\S+)::(\w+) (PASSED|FAILED|ERROR|XFAIL|SKIPPED)", line
        )
        if m is None:
            m = re.match(
                r"^\[gw\d+\] \[ *\d+%\] (PASSED|FAILED|ERROR|XFAIL|SKIPPED) \S+::(\w+)", line
            )
            if m is None:
                continue
            word, test = m.group(1), m.group(2)
        else:
            test, word = m.group(2), m.group(3)
        out[test] = f"{out[test]}+{word}" if test in out else word
    return out


# ---------------------------------------------------------------------------------------
# Failing and passing tests


def test_a_test_that_leaves_a_hazard_fails_with_the_report(pytester: pytest.Pytester) -> None:
    text = _write(pytester, "test_buggy", BUGGY)
    _write(pytester, "test_fixed", FIXED)
    advice = _write(pytester, "test_advice", ADVICE)
    result = _run(pytester, "--lifetimes-allow", "reuse-race", "--lifetimes")
    assert _outcomes(result) == {
        "test_unsynced_free": "FAILED",
        "test_record_stream_fixes_it": "PASSED",
        "test_redundant_record_stream": "PASSED",
    }, result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["esper-lifetimes: full tracking of every test, allowed: reuse-race"]
    )
    failure = out[out.index("_ test_unsynced_free _") : out.index("short test summary")]
    # Its first line (what pytest's short summary shows) names the kind and the use.
    use = _site("test_buggy", text, "use")
    assert f"stream hazard left behind: unsynced-free at {use}\n" in failure
    # The report: kind, the two streams, and the source lines of allocation, use and free.
    assert "ERROR unsynced-free" in failure
    assert "on side" in failure and "on default" in failure
    for tag in ("alloc", "use", "free"):
        assert _site("test_buggy", text, tag) in failure, (tag, failure)
    assert "x = torch.randn(N)" in failure and "y = x * 2" in failure and "del x" in failure
    assert "@pytest.mark.lifetimes(allow=['unsynced-free'])" in failure
    # The report is the failure: no traceback into the plugin.
    assert "pytest_plugin.py" not in failure
    # Advice is listed in the summary, never a failure.
    summary = out[out.index("esper-lifetimes advice") :]
    assert "redundant-record-stream" in summary
    assert _site("test_advice", advice, "again") in summary
    assert "in test_advice.py::test_redundant_record_stream" in summary
    result.stdout.fnmatch_lines(["esper-lifetimes: 3 tests tracked, 1 with stream hazards"])


# ---------------------------------------------------------------------------------------
# Attribution: teardown and garbage collection


def test_hazards_found_after_the_body_are_charged_to_their_test(
    pytester: pytest.Pytester,
) -> None:
    _write(
        pytester,
        "test_late",
        """
@pytest.fixture
def on_side():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    yield x, side
    del x  # the fixture's teardown frees it while the test's read on side is uncovered


def test_freed_in_fixture_teardown(on_side):
    x, side = on_side
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        x.add_(1)


def test_freed_at_garbage_collection():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        x.mul_(2)
    cycle = {"x": x}
    cycle["self"] = cycle  # x now dies only when the collector breaks the cycle
    del x, cycle


def test_freed_when_the_failed_test_is_released():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        x.mul_(2)
    raise RuntimeError("boom")  # x lives on in the traceback until after teardown


def test_fails_for_its_own_reason_and_leaves_a_hazard():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        x.mul_(2)
    del x
    raise RuntimeError("its own failure")


def test_innocent_bystander():
    y = torch.ones(N) * 3
    assert float(y.sum()) == 3 * N
""",
    )
    result = _run(pytester, "--lifetimes", "-p", "no:randomly")
    assert _outcomes(result) == {
        "test_freed_in_fixture_teardown": "PASSED+ERROR",
        "test_freed_at_garbage_collection": "FAILED",
        "test_freed_when_the_failed_test_is_released": "FAILED+ERROR",
        "test_fails_for_its_own_reason_and_leaves_a_hazard": "FAILED",
        "test_innocent_bystander": "PASSED",
    }, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_freed_in_fixture_teardown*",
            "*ERROR unsynced-free*",
            "*found during teardown or at garbage collection after the test*",
            "*A free without a source line happened where no line of yours was running*",
        ]
    )
    # A test that fails for its own reason keeps its failure; the hazard is a section.
    out = result.stdout.str()
    own = out[out.index("_ test_fails_for_its_own_reason_and_leaves_a_hazard _") :]
    assert "RuntimeError: its own failure" in own
    assert "Captured esper-lifetimes call" in own
    assert "ERROR unsynced-free" in own


# ---------------------------------------------------------------------------------------
# The marker and the fixture


def test_the_marker_sets_the_mode_and_allowed_kinds_per_test(pytester: pytest.Pytester) -> None:
    _write(
        pytester,
        "test_marked",
        _bug("test_plain"),
        _bug("test_marked_off", '@pytest.mark.lifetimes(mode="off")'),
        _bug("test_marked_off_positional", '@pytest.mark.lifetimes("off")'),
        _bug("test_allowed", '@pytest.mark.lifetimes(allow=["unsynced-free"])'),
        _bug("test_marked_full", '@pytest.mark.lifetimes(mode="full")'),
        _bug("test_bad_mode", '@pytest.mark.lifetimes(mode="sometimes")'),
        _bug("test_bad_kind", '@pytest.mark.lifetimes(allow=["unsynced-fre"])'),
        _bug("test_known_hazard", '@pytest.mark.xfail(strict=True, reason="known")'),
    )
    on = _run(pytester, "--lifetimes")
    assert _outcomes(on) == {
        "test_plain": "FAILED",
        "test_marked_off": "PASSED",
        "test_marked_off_positional": "PASSED",
        "test_allowed": "PASSED",
        "test_marked_full": "FAILED",
        "test_bad_mode": "ERROR",
        "test_bad_kind": "ERROR",
        "test_known_hazard": "XFAIL",
    }, on.stdout.str()
    on.stdout.fnmatch_lines(
        [
            "*@pytest.mark.lifetimes(mode='sometimes'): expected one of off, full, always-on*",
            "*unknown hazard kind(s) unsynced-fre*",
        ]
    )
    off = _run(pytester)  # off by default: only the test marked full is tracked
    assert _outcomes(off) == {
        "test_plain": "PASSED",
        "test_marked_off": "PASSED",
        "test_marked_off_positional": "PASSED",
        "test_allowed": "PASSED",
        "test_marked_full": "FAILED",
        "test_bad_mode": "ERROR",
        "test_bad_kind": "ERROR",
        "test_known_hazard": "FAILED",  # strict xfail: untracked, it passes
    }, off.stdout.str()


def test_the_fixture_gives_the_test_its_tracker(pytester: pytest.Pytester) -> None:
    _write(
        pytester,
        "test_fixture",
        _bug(
            "test_asserts_on_its_hazard",
            '@pytest.mark.lifetimes(allow=["unsynced-free"])',
            "lifetimes",
            # a free is judged when its block can be handed out again, or at a flush
            'lifetimes.engine.flush(); assert [h.kind for h in lifetimes.errors] == ["unsynced-free"]',
        ),
        _bug("test_fixture_switches_tracking_on", "", "lifetimes"),
        """
@pytest.mark.lifetimes(mode="off")
def test_fixture_is_none_when_off(lifetimes):
    assert lifetimes is None


def test_clean_test_sees_no_hazards(lifetimes):
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        x.mul_(2)
    virtual.current_stream().wait_stream(side)
    del x
    assert lifetimes.hazards == []
    assert "0 errors" in lifetimes.report()
""",
    )
    result = _run(pytester)  # not switched on for the run: the fixture does it
    assert _outcomes(result) == {
        "test_asserts_on_its_hazard": "PASSED",
        "test_fixture_switches_tracking_on": "FAILED",
        "test_fixture_is_none_when_off": "PASSED",
        "test_clean_test_sees_no_hazards": "PASSED",
    }, result.stdout.str()


# ---------------------------------------------------------------------------------------
# ini configuration and usage errors


def test_ini_option_switches_it_on_and_the_command_line_overrides_it(
    pytester: pytest.Pytester,
) -> None:
    _write(pytester, "test_buggy", BUGGY)
    pytester.makeini("[pytest]\nlifetimes = full\n")
    assert _outcomes(_run(pytester)) == {"test_unsynced_free": "FAILED"}
    assert _outcomes(_run(pytester, "--lifetimes=off")) == {"test_unsynced_free": "PASSED"}
    pytester.makeini("[pytest]\nlifetimes = full\nlifetimes_allow = unsynced-free reuse-race\n")
    assert _outcomes(_run(pytester)) == {"test_unsynced_free": "PASSED"}


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--lifetimes=bogus"],
            "",
            "*--lifetimes got 'bogus'; expected one of off, full, always-on*",
        ),
        ([], "lifetimes = sometimes", "*ini option 'lifetimes' got 'sometimes'*"),
        (["--lifetimes-allow=races"], "", "*unknown hazard kind(s) races*"),
        (["--lifetimes=test_buggy.py"], "", "*looks like a test path: write --lifetimes=full*"),
        (["--lifetimes-sample=2"], "", "*lifetimes_sample must be a probability in *"),
    ],
)
def test_bad_configuration_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    _write(pytester, "test_buggy", BUGGY)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_always_on_charges_each_test_with_the_hazards_found_in_it(
    pytester: pytest.Pytester,
) -> None:
    _write(
        pytester,
        "test_always_on",
        BUGGY,
        """
def test_the_same_bug_again():
    test_unsynced_free()  # the same sites: found again, charged to this test too
""",
        FIXED,
        """
def test_memory_freed_by_earlier_tests_is_handed_out_again():
    # The run's engine remembers the earlier frees: a reuse-race against them is the
    # earlier tests' hazard, already reported there, not this test's.
    xs = [torch.randn(N) for _ in range(64)]
    assert len(xs) == 64
""",
    )
    result = _run(pytester, "--lifetimes=always-on", "--lifetimes-sample=1")
    assert _outcomes(result) == {
        "test_unsynced_free": "FAILED",
        "test_the_same_bug_again": "FAILED",
        "test_record_stream_fixes_it": "PASSED",
        "test_memory_freed_by_earlier_tests_is_handed_out_again": "PASSED",
    }, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["esper-lifetimes: always-on tracking of every test (sample 1.0)", "*ERROR unsynced-free*"]
    )


# ---------------------------------------------------------------------------------------
# xdist, threads, the test's own regions, the plugin's own errors


def test_works_with_xdist(pytester: pytest.Pytester) -> None:
    text = _write(pytester, "test_buggy", BUGGY)
    _write(pytester, "test_fixed", FIXED)
    _write(pytester, "test_advice", ADVICE)
    # the flag before -n, the way people type it
    result = _run(pytester, "-p", "xdist", "--lifetimes", "-n", "2")
    assert _outcomes(result) == {
        "test_unsynced_free": "FAILED",
        "test_record_stream_fixes_it": "PASSED",
        "test_redundant_record_stream": "PASSED",
    }, result.stdout.str()
    out = result.stdout.str()
    assert "ERROR unsynced-free" in out
    for tag in ("alloc", "use", "free"):
        assert _site("test_buggy", text, tag) in out
    # Advice and counts found on the workers reach the controller's summary.
    assert "esper-lifetimes advice" in out and "redundant-record-stream" in out
    result.stdout.fnmatch_lines(["esper-lifetimes: 3 tests tracked, 1 with stream hazards"])


def test_tests_with_their_own_threads_streams_and_regions(pytester: pytest.Pytester) -> None:
    _write(
        pytester,
        "test_own",
        """
import threading

import esper_lifetimes


def test_worker_threads():
    results = []

    def work():
        s = virtual.Stream(name="worker")
        with virtual.stream(s):
            results.append(float((torch.ones(N) * 2).sum()))
        s.synchronize()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2.0 * N] * 4


def test_own_clean_region():
    with esper_lifetimes.track(on_hazard="raise") as t:
        side = virtual.Stream(name="mine")
        x = torch.randn(N)
        side.wait_stream(virtual.current_stream())
        with virtual.stream(side):
            x.mul_(2)
        x.record_stream(side)
        del x
    assert t.errors == []


@pytest.mark.lifetimes(allow=["unsynced-free"])
def test_own_region_that_expects_a_hazard():
    with esper_lifetimes.track(on_hazard="collect") as t:
        side = virtual.Stream(name="mine")
        x = torch.randn(N)
        side.wait_stream(virtual.current_stream())
        with virtual.stream(side):
            x.mul_(2)
        del x
    assert [h.kind for h in t.errors] == ["unsynced-free"]
""",
    )
    result = _run(pytester, "--lifetimes")
    assert _outcomes(result) == {
        "test_worker_threads": "PASSED",
        "test_own_clean_region": "PASSED",
        "test_own_region_that_expects_a_hazard": "PASSED",
    }, result.stdout.str()
    assert "internal errors" not in result.stdout.str()


def test_plugin_errors_are_reported_as_such_never_as_test_failures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import esper_lifetimes.pytest_plugin as plugin

        def broken(self):
            raise RuntimeError("the plugin broke")

        plugin._Region.new_hazards = broken
        """
    )
    _write(pytester, "test_buggy", BUGGY)
    _write(pytester, "test_fixed", FIXED)
    result = _run(pytester, "--lifetimes")
    assert _outcomes(result) == {
        "test_unsynced_free": "PASSED",
        "test_record_stream_fixes_it": "PASSED",
    }, result.stdout.str()
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= esper-lifetimes internal errors =*",
            "*not of your tests*",
            "test_buggy.py::test_unsynced_free: checking after the call: RuntimeError: the plugin broke",
        ]
    )


# ---------------------------------------------------------------------------------------
# Off means off: no torch, no engine


def test_importing_the_plugin_imports_neither_torch_nor_the_engine(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_imports="""
        import sys

        def test_nothing_heavy_was_imported(request):
            assert request.config.pluginmanager.has_plugin("esper-lifetimes-plugin")
            assert "esper_lifetimes.pytest_plugin" in sys.modules
            assert "torch" not in sys.modules
            assert "esper_lifetimes._core" not in sys.modules
        """
    )
    result = _run(pytester)
    assert _outcomes(result) == {"test_nothing_heavy_was_imported": "PASSED"}, result.stdout.str()


# ---------------------------------------------------------------------------------------
# Issue 10, item 4: scopes wider than a test, skips, option spellings, always-on counts


def test_a_module_fixture_freed_at_module_teardown_fails_the_last_test_of_the_module(
    pytester: pytest.Pytester,
) -> None:
    text = _write(
        pytester,
        "test_scoped",
        """
SIDE = virtual.Stream(name="side")


@pytest.fixture(scope="module")
def shared():
    x = torch.randn(N)  # @alloc
    yield x
    del x


def test_reads_it_on_side(shared):
    SIDE.wait_stream(virtual.current_stream())
    with virtual.stream(SIDE):
        y = shared * 2  # @use


def test_last_of_the_module():
    pass
""",
    )
    _write(pytester, "test_zz_after", FIXED)
    result = _run(pytester, "-p", "no:randomly", "--lifetimes")
    assert _outcomes(result) == {
        "test_reads_it_on_side": "PASSED",
        "test_last_of_the_module": "PASSED+ERROR",
        "test_record_stream_fixes_it": "PASSED",
    }, result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    err = out[out.index("ERROR at teardown of test_last_of_the_module") :]
    assert "ERROR unsynced-free" in err
    assert _site("test_scoped", text, "alloc") in err and _site("test_scoped", text, "use") in err
    assert "registered while test_scoped.py::test_reads_it_on_side ran" in err
    result.stdout.fnmatch_lines(["esper-lifetimes: 3 tests tracked, 1 with stream hazards"])


def test_a_session_fixture_teardown_hazard_fails_the_last_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest
        import torch
        from esper_lifetimes import virtual


        @pytest.fixture(scope="session")
        def pool():
            side = virtual.Stream(name="side")
            x = torch.randn(1024)
            yield x
            side.wait_stream(virtual.current_stream())
            with virtual.stream(side):
                y = x * 2  # the teardown's own racy read
            del x
        """
    )
    _write(pytester, "test_a", "def test_uses_pool(pool):\n    assert pool.shape == (N,)\n")
    _write(pytester, "test_b", "def test_other():\n    pass\n")
    result = _run(pytester, "-p", "no:randomly", "--lifetimes")
    assert _outcomes(result) == {
        "test_uses_pool": "PASSED",
        "test_other": "PASSED+ERROR",
    }, result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "ERROR unsynced-free" in result.stdout.str()


def test_a_test_that_skips_after_a_hazard_is_named(pytester: pytest.Pytester) -> None:
    _write(
        pytester,
        "test_skips",
        """
def test_skips_after_the_bug():
    side = virtual.Stream(name="side")
    x = torch.randn(N)
    side.wait_stream(virtual.current_stream())
    with virtual.stream(side):
        y = x * 2
    del x
    z = torch.empty(N)  # the allocation that takes the free's verdict
    pytest.skip("later")
""",
        'def test_plain_skip():\n    pytest.skip("nothing to do")\n',
    )
    result = _run(pytester, "--lifetimes")
    assert _outcomes(result) == {
        "test_skips_after_the_bug": "FAILED",
        "test_plain_skip": "SKIPPED",
    }, result.stdout.str()
    out = result.stdout.str()
    assert "FAILED test_skips.py::test_skips_after_the_bug" in out
    assert "then called pytest.skip('later')" in out
    result.stdout.fnmatch_lines(["esper-lifetimes: 2 tests tracked, 1 with stream hazards"])


@pytest.mark.parametrize(
    "args",
    [
        ["--lifetimes", "test_buggy.py"],
        ["--lifetimes", "test_buggy.py::test_unsynced_free"],
        ["test_buggy.py", "--lifetimes"],
        ["--lifetimes=full", "test_buggy.py"],
        ["--lifetimes", "full", "test_buggy.py"],
        ["--lifetimes", "-p", "no:randomly", "test_buggy.py"],
    ],
)
def test_every_ordinary_spelling_of_the_flag(pytester: pytest.Pytester, args: list[str]) -> None:
    _write(pytester, "test_buggy", BUGGY)
    _write(pytester, "test_fixed", FIXED)  # not run: only test_buggy.py is named
    result = _run(pytester, *args)
    assert _outcomes(result) == {"test_unsynced_free": "FAILED"}, result.stdout.str()
    result.stdout.fnmatch_lines(["esper-lifetimes: full tracking of every test"])


def test_always_on_in_a_test_run_checks_every_test_and_says_how_many_ops(
    pytester: pytest.Pytester,
) -> None:
    _write(pytester, "test_buggy", BUGGY)
    _write(pytester, "test_fixed", FIXED)
    result = _run(pytester, "--lifetimes=always-on")  # no --lifetimes-sample: every window
    assert _outcomes(result) == {
        "test_unsynced_free": "FAILED",
        "test_record_stream_fixes_it": "PASSED",
    }, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "esper-lifetimes: always-on tracking of every test (sample 1.0)",
            "esper-lifetimes: 2 tests tracked (always-on: * ops checked), 1 with stream hazards",
        ]
    )
    result = _run(pytester, "--lifetimes=always-on", "--lifetimes-sample=0")
    assert _outcomes(result) == {
        "test_unsynced_free": "PASSED",
        "test_record_stream_fixes_it": "PASSED",
    }
    result.stdout.fnmatch_lines(
        [
            "esper-lifetimes: 2 tests tracked (always-on: 0 ops checked; 2 tests with no op "
            "checked at sample 0.0: raise --lifetimes-sample)"
        ]
    )


def test_a_monkeypatch_leaves_no_tracker_wrapper_on_torch(pytester: pytest.Pytester) -> None:
    _write(
        pytester,
        "test_patching",
        """
ORIGINAL = torch.Tensor.__dict__["record_stream"]


@pytest.fixture(scope="module")
def quiet_record_stream():
    with pytest.MonkeyPatch.context() as mp:  # set up inside the first test's region
        mp.setattr(torch.Tensor, "record_stream", lambda self, s: None)
        yield


def test_one(quiet_record_stream):
    pass


def test_two(quiet_record_stream, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: [])
""",
    )
    _write(
        pytester,
        "test_zz_after",
        """
from test_patching import ORIGINAL


@pytest.mark.lifetimes(mode="off")
def test_afterwards_torch_is_itself():  # the module fixture's monkeypatch is undone
    assert torch.Tensor.__dict__["record_stream"] is ORIGINAL
    assert "tolist" not in torch.Tensor.__dict__
""",
    )
    result = _run(pytester, "-p", "no:randomly", "--lifetimes")
    assert _outcomes(result) == {
        "test_one": "PASSED",
        "test_two": "PASSED",
        "test_afterwards_torch_is_itself": "PASSED",
    }, result.stdout.str()
