"""The ``esper-lifetimes`` command line (also ``python -m esper_lifetimes``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from importlib import resources
from typing import Any, TextIO

EXIT_OK = 0
EXIT_HAZARDS = 1
EXIT_BAD_INPUT = 2

DEMO_TRACE = "training_step.jsonl"

# Kinds in the order a report lists them (errors first); kinds not listed here follow.
KIND_ORDER = (
    "unsynced-free",
    "reuse-race",
    "unsynced-access",
    "host-read-before-copy",
    "host-write-during-copy",
    "redundant-record-stream",
)

_DESCRIPTION = """\
Find CUDA stream lifetime hazards (a storage freed while another stream may still use
it, its block reused under that use, unordered accesses, host reads of in-flight copies)
in a recorded trace of engine events. The trace format is described in
docs/TRACE-FORMAT.md."""

_EXIT_CODES = """\
exit status:
  0  no error-severity hazard (advice may have been printed)
  1  at least one error-severity hazard
  2  bad input: unreadable or malformed trace, or an event the engine rejects"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esper-lifetimes",
        description=_DESCRIPTION,
        epilog="Run 'esper-lifetimes COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    replay = sub.add_parser(
        "replay",
        help="replay a trace file and report the hazards found",
        description="Replay a trace file (JSON Lines, optionally .gz) through the engine and\n"
        "print the hazards found, grouped by kind, with counts.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("trace", metavar="TRACE", help="path of the trace file")
    replay.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (summary per kind and every hazard) instead of text",
    )

    demo = sub.add_parser(
        "demo",
        help="replay the bundled example trace of a multi-stream training step",
        description="Replay the bundled trace of a training step on four environment streams\n"
        "(esper_lifetimes/data/training_step.jsonl, made by examples/make_training_trace.py)\n"
        "and print the report. The trace holds a real hazard: per-environment tensors freed\n"
        "while an environment stream may still read them, and their blocks reused.",
        epilog="exit status:\n  0  the demo ran\n  2  the bundled trace could not be replayed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _order(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def summarize(hazards: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per kind, in report order: severity, distinct hazards and total occurrences."""
    kinds: dict[str, dict[str, Any]] = {}
    for h in hazards:
        entry = kinds.setdefault(h.kind, {"severity": h.severity, "distinct": 0, "occurrences": 0})
        entry["distinct"] += 1
        entry["occurrences"] += h.count
    return {kind: kinds[kind] for kind in sorted(kinds, key=_order)}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def report_text(source: str, events: int, engine: Any, out: TextIO) -> None:
    """Write the human-readable report of ``engine``'s hazards."""
    hazards = engine.hazards()
    errors = sum(1 for h in hazards if h.severity == "error")
    advice = len(hazards) - errors
    streams = engine.stats()["streams"]
    out.write(
        f"Replayed {_plural(events, 'event')} on {_plural(streams, 'stream')} from {source}.\n"
    )
    if not hazards:
        out.write("No hazards found.\n")
        return
    out.write(
        f"Found {_plural(len(hazards), 'distinct hazard')}: "
        f"{_plural(errors, 'error')}, {advice} advice.\n"
    )
    by_kind: dict[str, list[Any]] = {}
    for h in hazards:
        by_kind.setdefault(h.kind, []).append(h)
    for kind, entry in summarize(hazards).items():
        out.write(
            f"\n{kind} ({entry['severity']}): {_plural(entry['distinct'], 'distinct hazard')}, "
            f"{_plural(entry['occurrences'], 'occurrence')}\n"
        )
        for h in by_kind[kind]:
            out.write(
                textwrap.fill(h.message, width=100, initial_indent="  - ", subsequent_indent="    ")
            )
            out.write("\n")


def report_json(source: str, events: int, engine: Any) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    hazards = engine.hazards()
    errors = sum(1 for h in hazards if h.severity == "error")
    return {
        "trace": source,
        "events": events,
        "streams": engine.stats()["streams"],
        "errors": errors,
        "advice": len(hazards) - errors,
        "kinds": summarize(hazards),
        "hazards": [h.to_dict() for h in hazards],
    }


def _replay(path: Any, source: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Replay the trace at ``path``, print the report; returns the exit status."""
    from esper_lifetimes.trace import TraceError, read_trace, replay_trace

    try:
        trace = read_trace(path)
        engine = replay_trace(trace)
    except TraceError as exc:
        err.write(f"esper-lifetimes: error: {exc}\n")
        return EXIT_BAD_INPUT
    counted = trace.events_read
    if as_json:
        json.dump(report_json(source, counted, engine), out, indent=2)
        out.write("\n")
    else:
        report_text(source, counted, engine, out)
    return EXIT_HAZARDS if engine.error_count() else EXIT_OK


def _cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _replay(args.trace, args.trace, args.json, out, err)


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    data = resources.files("esper_lifetimes").joinpath("data", DEMO_TRACE)
    if not data.is_file():
        err.write(f"esper-lifetimes: error: bundled trace {DEMO_TRACE} is missing\n")
        return EXIT_BAD_INPUT
    if not args.json:
        out.write(
            "esper-lifetimes demo: one training step on 4 environment streams, recorded as\n"
            "engine events (a shared batch split and cloned for each stream, forward and\n"
            "backward per stream, then a fused validation pass).\n\n"
        )
    with resources.as_file(data) as path:
        status = _replay(path, f"<bundled {DEMO_TRACE}>", args.json, out, err)
    if status == EXIT_BAD_INPUT:
        return status
    if not args.json:
        out.write(
            "\nThe validation pass allocates each environment's override tensor on the default\n"
            "stream and rebinds it for the next environment before the end-of-pass\n"
            "synchronize: the free is not ordered after the environment stream's read, and the\n"
            "allocator hands the block to a later override. Fix: override.record_stream(s), or\n"
            "default.wait_stream(s) before the rebinding.\n"
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    command = _cmd_replay if args.command == "replay" else _cmd_demo
    try:
        return command(args, out, err)
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BAD_INPUT
