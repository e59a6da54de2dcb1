"""The ``esper-lifetimes`` command line (also ``python -m esper_lifetimes``).

    esper-lifetimes run [--mode full|always-on] [--sample P] [--report DIR]
                        [--fail-on error|advice|never] SCRIPT [ARGS...]
    esper-lifetimes replay TRACE [--report DIR] [--json] [--fail-on ...]
    esper-lifetimes demo [--trace] [--report DIR] [--json]

Every command prints the text report of :func:`esper_lifetimes.reports.write_text` on
stderr (``--json``: the JSON report on stdout instead) and, with ``--report DIR``, writes
the four reports of :func:`esper_lifetimes.reports.write_all` (``docs/REPORTS.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from importlib import resources
from typing import Any, TextIO

EXIT_OK = 0
EXIT_HAZARDS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT

DEMO_TRACE = "training_step.jsonl"
DEFAULT_MAX_EVENTS = 200_000
FAIL_ON = ("error", "advice", "never")

_DESCRIPTION = """\
Find CUDA stream lifetime hazards in PyTorch programs: a storage freed while another
stream may still use it, its block reused under that use, unordered accesses from two
streams, host reads of copies still in flight, redundant record_stream calls.

The report goes to stderr: hazards grouped by kind, with counts, the streams involved and
the source lines. --report DIR also writes report.txt, report.json (schema
esper-lifetimes-report v1), trace.json (Chrome trace: ui.perfetto.dev, chrome://tracing)
and report.html (the timeline, one self-contained page); see docs/REPORTS.md."""

_EPILOG = """\
exit status (details in each command's --help):
  0    no hazard that counts as a failure
  1    hazards found (errors by default; see --fail-on), or a run script's own status
  2    bad usage or bad input
Run 'esper-lifetimes COMMAND --help' for a command's options."""

_REPORT_HELP = (
    "also write DIR/report.txt, report.json, trace.json (Chrome trace) and report.html "
    "(created if missing)"
)
_FAIL_ON_HELP = (
    "which hazards make the exit status 1: 'error' (default: error-severity hazards), "
    "'advice' (any hazard, advice included) or 'never'"
)

_RUN_DESCRIPTION = """\
Run SCRIPT as __main__, as 'python SCRIPT ARGS...' would (sys.argv is [SCRIPT, *ARGS] and
the script's directory comes first on sys.path), with esper-lifetimes tracking on, then
print the report on stderr. The report is printed also when the script raises or calls
sys.exit(); an uncaught exception's traceback is printed as Python prints it.

  --mode full       every torch op is tracked: esper_lifetimes.enable(mode="full")
  --mode always-on  only sampled windows of ops between synchronizations are, cheap
                    enough for whole training runs: enable(mode="always-on", sample=P)

Without a GPU, CPU tensors stand for device memory on esper_lifetimes.virtual streams.
Hazards are also sent to the 'esper_lifetimes' logger as they are found (shown when the
script configures logging). A track() region or @checked call inside the script keeps
its own hazards: they are not in this report."""

_RUN_EPILOG = """\
exit status:
  N    the script's own exit status when it is not 0: its sys.exit() code, 1 for an
       uncaught exception, 130 for KeyboardInterrupt (the report is printed first)
  1    the script succeeded and hazards were found (error-severity ones; see --fail-on)
  0    the script succeeded and no hazard that --fail-on counts was found
  2    bad usage: an unknown option, no SCRIPT, a SCRIPT that is not a readable file,
       a --report directory that cannot be created

examples:
  esper-lifetimes run train.py --epochs 1
  esper-lifetimes run --report reports/ train.py
  esper-lifetimes run --mode always-on --sample 0.05 --fail-on never train.py"""

_REPLAY_DESCRIPTION = """\
Replay a trace file (JSON Lines, optionally .gz; docs/TRACE-FORMAT.md) through the
engine and print the report on stderr: hazards grouped by kind, with counts, streams and
sites. With --report DIR the four reports are written too, the timeline taken from the
trace."""

_REPLAY_EPILOG = """\
exit status:
  0    no hazard that --fail-on counts (advice may have been printed)
  1    hazards found: error-severity ones by default (see --fail-on)
  2    bad usage, or bad input: an unreadable or malformed trace, an event the engine
       rejects (the file and line are named), a --report directory that cannot be made"""

_DEMO_DESCRIPTION = """\
Run the bundled example (esper_lifetimes/examples/vectorized_step.py; in a checkout,
examples/vectorized_step.py runs it too): one vectorized training step of three
environments, each on its own stream, sharing one batch, then a fused validation pass.
It is tracked op by op on virtual streams (CPU tensors standing for device memory; no GPU
needed). The report goes to stderr, what it means to stdout.

The step holds a real hazard: the validation pass rebinds a per-environment tensor
before the synchronize that ends the pass, freeing a block an environment stream may
still be reading (unsynced-free; a reuse-race too when the allocator hands that block
out again). Two record_stream calls are redundant (advice). The corrected step is then
run: clean.

With --trace, replay the bundled trace of a training step on four environment streams
instead (esper_lifetimes/data/training_step.jsonl, written by
examples/make_training_trace.py; the same as 'esper-lifetimes replay' of that file)."""

_DEMO_EPILOG = """\
exit status:
  0    the demo found what it shows: the hazards of the step as shipped (and, without
       --trace, none in the corrected step)
  1    it did not (a regression in esper-lifetimes)
  2    bad usage, torch missing (without --trace), the bundled files missing, or a
       --report directory that cannot be made

examples:
  esper-lifetimes demo
  esper-lifetimes demo --report demo-report    # then open demo-report/report.html
  esper-lifetimes demo --trace"""

_DEMO_INTRO = """\
esper-lifetimes demo: one vectorized training step of 3 environments, each on its own
stream, tracked op by op on virtual streams (CPU tensors standing for device memory).
The shared batch is split and cloned on the default stream and handed to the environment
streams; a fused validation pass then builds an override tensor per environment on the
default stream and reads it on the environment's stream.
"""

_DEMO_OUTRO = """
The validation pass rebinds `override` for the next environment before the synchronize
that ends the pass: the free is not ordered after the environment stream's read, and the
allocator hands the block to the next override. Fix: override.record_stream(env.stream)
before the rebinding (or default.wait_stream(env.stream)).
"""

_DEMO_TRACE_INTRO = """\
esper-lifetimes demo --trace: one training step on 4 environment streams, recorded as
engine events (a shared batch split and cloned for each stream, forward and backward per
stream, then a fused validation pass), replayed through the engine.
"""

_DEMO_TRACE_OUTRO = """
The validation pass allocates each environment's override tensor on the default stream
and rebinds it for the next environment before the end-of-pass synchronize: the free is
not ordered after the environment stream's read, and the allocator hands the block to a
later override. Fix: override.record_stream(s), or default.wait_stream(s) before the
rebinding.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], not {text}")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esper-lifetimes",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    from esper_lifetimes import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        usage="%(prog)s [-h] [--mode {full,always-on}] [--sample P] [--report DIR]\n"
        "       [--max-events N] [--fail-on {error,advice,never}] [--emulate-cuda]\n"
        "       SCRIPT [ARGS ...]",
        help="run a Python script under the tracker and report the hazards found",
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EPILOG,
        formatter_class=_Formatter,
    )
    run.add_argument(
        "--mode",
        choices=("full", "always-on"),
        default="full",
        help="full (default): track every op; always-on: track sampled windows",
    )
    run.add_argument(
        "--sample",
        type=_probability,
        metavar="P",
        help="always-on only: probability that a window of tracked ops opens at a "
        "synchronization (default 0.005; 1 tracks every window)",
    )
    run.add_argument("--report", metavar="DIR", help=_REPORT_HELP)
    run.add_argument(
        "--max-events",
        type=_positive,
        default=DEFAULT_MAX_EVENTS,
        metavar="N",
        help="with --report: engine calls kept for the timeline "
        f"(default {DEFAULT_MAX_EVENTS:,}); later ones are counted, not kept, and hazards "
        "they open are listed without a place on the timeline",
    )
    run.add_argument("--fail-on", choices=FAIL_ON, default="error", help=_FAIL_ON_HELP)
    run.add_argument(
        "--emulate-cuda",
        action="store_true",
        help="run torch.cuda code on a machine without a GPU: CUDA tensors are CPU tensors "
        "that say they are CUDA, CUDA streams and events are virtual ones "
        "(esper_lifetimes.emulate_cuda; docs/EMULATION.md)",
    )
    # One REMAINDER positional: everything from SCRIPT on belongs to the script (its own
    # options included); argparse would call a separate ARGS positional required.
    run.add_argument(
        "script_argv",
        metavar="SCRIPT [ARGS ...]",
        nargs=argparse.REMAINDER,
        help="the Python file to run and its arguments (all that follows SCRIPT goes to it)",
    )
    run.set_defaults(parser=run)

    replay = sub.add_parser(
        "replay",
        help="replay a trace file and report the hazards found",
        description=_REPLAY_DESCRIPTION,
        epilog=_REPLAY_EPILOG,
        formatter_class=_Formatter,
    )
    replay.add_argument("trace", metavar="TRACE", help="path of the trace file")
    replay.add_argument("--report", metavar="DIR", help=_REPORT_HELP)
    replay.add_argument(
        "--json",
        action="store_true",
        help="print the JSON report (the report.json of --report) on stdout instead of "
        "the text on stderr",
    )
    replay.add_argument("--fail-on", choices=FAIL_ON, default="error", help=_FAIL_ON_HELP)

    demo = sub.add_parser(
        "demo",
        help="run the bundled multi-stream training-step example and report",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=_Formatter,
    )
    demo.add_argument(
        "--trace",
        action="store_true",
        help="replay the bundled trace instead of running the torch example",
    )
    demo.add_argument("--report", metavar="DIR", help=_REPORT_HELP)
    demo.add_argument(
        "--json",
        action="store_true",
        help="print the JSON report on stdout (and nothing else there)",
    )

    merge = sub.add_parser(
        "merge",
        help="merge the reports of the ranks of a distributed run into one",
        description="Merge the per-rank reports that 'esper-lifetimes run --report DIR' "
        "writes under torchrun (DIR/rank0, DIR/rank1, ...) into one report: hazards that "
        "several ranks share are shown once with the ranks listed, each naming its "
        "collective and source lines. Text on stdout; exit status 1 when a rank found an "
        "error.",
        formatter_class=_Formatter,
    )
    merge.add_argument(
        "dirs", metavar="DIR", nargs="+", help="a rank's report directory, or one holding them"
    )
    merge.add_argument(
        "--report",
        metavar="OUT",
        help="also write report.txt, report.json, trace.json (a track group per rank) and "
        "report.html into OUT",
    )
    merge.add_argument(
        "--json", action="store_true", help="print the merged JSON report on stdout instead"
    )
    return parser


# ---------------------------------------------------------------------------------------
# Reporting: the same for every command


def _error(err: TextIO, message: str) -> int:
    err.write(f"esper-lifetimes: error: {message}\n")
    return EXIT_BAD_INPUT


def _make_report_dir(path: str | None, err: TextIO) -> bool:
    """Creates ``--report DIR`` up front, so a bad path fails before any work."""
    if not path:
        return True
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        _error(err, f"cannot create the report directory {path!r}: {exc.strerror or exc}")
        return False
    return True


def _report(
    hazards: Sequence[Any] | None,
    timeline: Any,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    *,
    meta: dict[str, Any] | None = None,
    title: str | None = None,
    sources: dict[str, str] | None = None,
) -> list[dict[str, Any]] | None:
    """Prints the report (text on ``err``, or ``--json`` on ``out``) and writes
    ``--report DIR``. ``timeline``: a Timeline, an Analysis or None; ``hazards=None``:
    the hazards of its replay. Returns the hazards as dicts, None when writing failed."""
    from esper_lifetimes import reports
    from esper_lifetimes.fixes import fix_for  # names the real tensor and stream

    # Replayed once: the writers take the Analysis (which carries the hazards) as is.
    analysis = reports.analyze(timeline, hazards) if timeline is not None else None
    if analysis is not None:
        hs, given = [h.fields for h in analysis.hazards], None
    else:
        hs = given = [reports.hazard_dict(h) for h in hazards or ()]
    out.flush()
    if getattr(args, "json", False):
        reports.write_json(out, given, analysis, meta, sources=sources)
    else:
        reports.write_text(hs, err, timeline=analysis, sources=sources, fix_for=fix_for)
    if args.report:
        try:
            paths = reports.write_all(
                args.report,
                given,
                analysis,
                meta=meta,
                title=title,
                sources=sources,
                fix_for=fix_for,
            )
        except OSError as exc:
            _error(err, f"cannot write the reports to {args.report!r}: {exc}")
            return None
        names = ", ".join(os.path.basename(p) for p in paths.values())
        err.write(f"esper-lifetimes: reports written to {args.report}: {names}\n")
    err.flush()
    return hs


def _failed(hazards: Sequence[dict[str, Any]], fail_on: str) -> bool:
    if fail_on == "never":
        return False
    if fail_on == "advice":
        return bool(hazards)
    return any(h["severity"] == "error" for h in hazards)


def _needs_torch(err: TextIO, what: str) -> int:
    return _error(
        err,
        f"{what} needs torch (pip install 'esper-lifetimes[torch]'); "
        "'esper-lifetimes demo --trace' and 'replay' work without it",
    )


# ---------------------------------------------------------------------------------------
# run


def _exit_status(code: Any, err: TextIO) -> int:
    """The process status for ``sys.exit(code)``, as Python computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    err.write(f"{code}\n")
    return 1


def _print_exception(exc: BaseException, script: str, err: TextIO) -> None:
    """The traceback as ``python SCRIPT`` prints it: from the script's first frame on."""
    target = os.path.abspath(script)
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    # None: no frame of the script (a SyntaxError names its file and line itself)
    traceback.print_exception(type(exc), exc, tb, file=err)


def _run_script(script: str, argv: Sequence[str], err: TextIO) -> int:
    """Runs ``script`` as ``__main__``; returns the exit status ``python`` would give."""
    import runpy

    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [script, *argv]
    sys.path[:1] = [os.path.dirname(os.path.abspath(script))]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code, err)
    except KeyboardInterrupt as exc:
        _print_exception(exc, script, err)
        return EXIT_INTERRUPTED
    except BaseException as exc:
        _print_exception(exc, script, err)
        return 1
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
    return 0


def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    argv = args.script_argv
    if argv[:1] == ["--"]:
        del argv[0]
    if not argv:
        args.parser.error("the following arguments are required: SCRIPT")
    script, script_args = argv[0], argv[1:]
    if args.sample is not None and args.mode != "always-on":
        return _error(err, "--sample applies to --mode always-on only")
    if not os.path.isfile(script):
        why = "no such file" if not os.path.exists(script) else "not a file"
        return _error(err, f"cannot run {script!r}: {why}")
    if not os.access(script, os.R_OK):
        return _error(err, f"cannot run {script!r}: not readable")
    if args.report:
        from esper_lifetimes import merge

        args.report = merge.rank_dir(args.report)  # under torchrun: one per rank
    if not _make_report_dir(args.report, err):
        return EXIT_BAD_INPUT
    try:
        import torch  # noqa: F401
    except ImportError:
        return _needs_torch(err, "esper-lifetimes run")
    from esper_lifetimes import modes, reports, tracking

    # Hazards go to the 'esper_lifetimes' logger as they are found; without a handler
    # configured by the script, logging would print each one again before the report.
    log = logging.getLogger("esper_lifetimes")
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())

    timeline = reports.Timeline(max_events=args.max_events) if args.report else None
    sample = modes.DEFAULT_SAMPLE if args.sample is None else args.sample
    was_enabled = tracking.is_enabled()
    emulate = "cuda" if args.emulate_cuda else None
    tracker = modes.enable(args.mode, sample=sample, timeline=timeline, emulate=emulate)
    assert tracker is not None
    try:
        status = _run_script(script, script_args, err)
    finally:
        modes.disable()  # stops the run's tracker: what the script leaves alive stays
        if was_enabled:
            modes.enable()

    summary = tracker.summary()
    if args.mode == "full":
        how = "full tracking"
    else:
        how = (
            f"always-on tracking (sample {tracker.sample:g}: {summary['windows_opened']} "
            f"windows tracked at {summary['barriers']} synchronizations)"
        )
    out.flush()
    if emulate:
        how += " on emulated CUDA"
    err.write(f"esper-lifetimes: {script} ran under {how}; its exit status: {status}\n")
    if tracker.diagnostics:
        err.write("esper-lifetimes: internal failures while tracking (hazards may be missed):\n")
        err.write("".join(f"  {line}\n" for line in tracker.diagnostics))
    meta = {
        "program": script,
        "command": ["esper-lifetimes", "run", script, *script_args],
        "mode": args.mode,
        "sample": tracker.sample,
        "exit_status": status,
        "windows_opened": summary["windows_opened"],
    }
    from esper_lifetimes import distributed

    meta.update(distributed.run_meta(tracker))  # rank, world size, collectives
    hs = _report(
        tracker.hazards,
        timeline,
        args,
        out,
        err,
        meta=meta,
        title=f"esper-lifetimes: {os.path.basename(script)}",
    )
    if status != 0:
        return status
    if hs is None:
        return EXIT_BAD_INPUT
    return EXIT_HAZARDS if _failed(hs, args.fail_on) else EXIT_OK


# ---------------------------------------------------------------------------------------
# replay


def _replay(
    path: Any, label: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> list[dict[str, Any]] | None:
    """Replays the trace at ``path`` once and reports; None on bad input."""
    from esper_lifetimes import reports
    from esper_lifetimes.trace import TraceError

    if not _make_report_dir(args.report, err):
        return None
    try:
        timeline = reports.Timeline.from_trace(path)
    except TraceError as exc:
        _error(err, str(exc))
        return None
    timeline.meta["trace"] = label
    cut = timeline.meta.get("trace_cut_at")
    if cut is not None:
        err.write(
            f"esper-lifetimes: warning: {label}:{cut}: the trace was cut (its last line is "
            f"not whole); replaying the {len(timeline)} events before it\n"
        )
    analysis = reports.analyze(timeline)
    if analysis.rejected:
        seq, op, why = analysis.rejected[0]
        line = timeline[seq].line
        more = len(analysis.rejected) - 1
        _error(err, f"{label}:{line}: {op}: {why}" + (f" ({more} more)" if more else ""))
        return None
    name = os.path.basename(label)
    return _report(None, analysis, args, out, err, title=f"esper-lifetimes: {name}")


def _cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    hs = _replay(args.trace, args.trace, args, out, err)
    if hs is None:
        return EXIT_BAD_INPUT
    return EXIT_HAZARDS if _failed(hs, args.fail_on) else EXIT_OK


# ---------------------------------------------------------------------------------------
# demo


def _cmd_demo_trace(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    data = resources.files("esper_lifetimes").joinpath("data", DEMO_TRACE)
    if not data.is_file():
        return _error(err, f"bundled trace {DEMO_TRACE} is missing")
    if not args.json:
        out.write(_DEMO_TRACE_INTRO + "\n")
    with resources.as_file(data) as path:
        hs = _replay(path, f"{DEMO_TRACE} (bundled)", args, out, err)
    if hs is None:
        return EXIT_BAD_INPUT
    if not args.json:
        out.write(_DEMO_TRACE_OUTRO)
    shows_its_hazard = _failed(hs, "error")
    return EXIT_OK if shows_its_hazard else EXIT_HAZARDS


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.trace:
        return _cmd_demo_trace(args, out, err)
    if not _make_report_dir(args.report, err):
        return EXIT_BAD_INPUT
    try:
        from esper_lifetimes.examples import vectorized_step as ex
    except ImportError as exc:
        if exc.name != "torch":
            raise
        return _needs_torch(err, "esper-lifetimes demo")
    from esper_lifetimes import reports

    if not args.json:
        out.write(_DEMO_INTRO + "\n")
    backend = ex.Backend(cuda=False)
    timeline = reports.Timeline(max_events=DEFAULT_MAX_EVENTS) if args.report else None
    # Sites are paths relative to the working directory: run in the example's directory
    # so that they read "vectorized_step.py:LINE" wherever the package is installed.
    name = os.path.basename(ex.__file__)
    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(ex.__file__)))
    try:
        shipped = ex.run(backend, fixed=False, timeline=timeline)
        fixed = ex.run(backend, fixed=True)
        verdict = ex.verdict(shipped, fixed=False)
        with open(name, encoding="utf-8") as f:
            sources = {name: f.read()}
    finally:
        os.chdir(here)
    meta = {
        "program": ex.__name__.replace(".", "/") + ".py",
        "command": ["esper-lifetimes", "demo"],
        "description": "one vectorized training step of 3 environments on their own "
        "streams, then a fused validation pass, on virtual streams",
    }
    title = "esper-lifetimes demo: a vectorized training step on 3 environment streams"
    hs = _report(shipped.hazards, timeline, args, out, err, meta=meta, title=title, sources=sources)
    if hs is None:
        return EXIT_BAD_INPUT
    if not args.json:
        out.write("\n" + "\n".join(verdict) + "\n" + _DEMO_OUTRO)
        found = "no hazards found" if not fixed.hazards else f"{len(fixed.hazards)} hazard(s)"
        out.write(f"The corrected step (train_step_fixed, validation_pass_fixed): {found}.\n")
    ok = ex.as_expected(shipped, fixed=False) and ex.as_expected(fixed, fixed=True)
    return EXIT_OK if ok else EXIT_HAZARDS


# ---------------------------------------------------------------------------------------


def _cmd_merge(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from esper_lifetimes import merge

    return merge.main(args.dirs, args.report, args.json, out, err)


_COMMANDS = {"run": _cmd_run, "replay": _cmd_replay, "demo": _cmd_demo, "merge": _cmd_merge}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (usage errors raise SystemExit(2))."""
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        return _COMMANDS[args.command](args, out, err)
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BAD_INPUT
