"""Reports of one run: text, JSON, a Chrome trace-event timeline and a self-contained HTML page.

All four are made from the same two inputs: the hazards the engine found, and (for the
timelines) a :class:`Timeline`, the ordered record of the engine calls of the run. The
formats are described in ``docs/REPORTS.md``; the JSON report's schema is
``esper_lifetimes/schemas/report-v1.schema.json``.

>>> timeline = Timeline()
>>> engine = timeline.wrap(Engine())            # an Engine that also records every call
>>> engine.alloc(0x1000, 4096, 0, "ex.py:1")    # doctest: +SKIP
>>> write_all("report", engine.hazards(), timeline)  # doctest: +SKIP

A tracker that drives its own engine can feed the timeline directly with
``timeline.record(op, **args)`` after each call the engine accepted; a trace file becomes
a timeline with :meth:`Timeline.from_trace`.

The timelines place each hazard at the event where it opened: the timeline is replayed
through a fresh :class:`~esper_lifetimes.Engine` one call at a time, and the call after
which ``hazard_count()`` grew is the one that opened the new hazards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from esper_lifetimes.reports._common import KIND_ORDER, KINDS, hazard_dict
from esper_lifetimes.reports._common import KindInfo as KindInfo
from esper_lifetimes.reports.analysis import Analysis, analyze
from esper_lifetimes.reports.chrome import CHROME_TRACE_SCHEMA, chrome_trace, write_chrome_trace
from esper_lifetimes.reports.html import html_report, write_html
from esper_lifetimes.reports.json_report import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    load_schema,
    report_dict,
    write_json,
)
from esper_lifetimes.reports.text import FixFor, format_report, write_text
from esper_lifetimes.reports.timeline import OPS as OPS
from esper_lifetimes.reports.timeline import Timeline, TimelineEngine, TimelineEvent

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "CHROME_TRACE_SCHEMA",
    "KIND_ORDER",
    "KINDS",
    "Timeline",
    "TimelineEvent",
    "TimelineEngine",
    "Analysis",
    "analyze",
    "hazard_dict",
    "report_dict",
    "load_schema",
    "write_text",
    "format_report",
    "write_json",
    "chrome_trace",
    "write_chrome_trace",
    "html_report",
    "write_html",
    "write_all",
]

# --------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------


def write_all(
    report_dir: str | os.PathLike,
    hazards: Iterable[Any] | None,
    timeline: Timeline | Analysis | None,
    *,
    meta: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
    title: str | None = None,
    fix_for: FixFor | None = None,
) -> dict[str, str]:
    """Write ``report.txt``, ``report.json`` and, with a timeline, ``trace.json`` (Chrome
    trace) and ``report.html`` into ``report_dir`` (created); returns {format: path}.

    ``timeline`` may be an :class:`Analysis` (then it is not replayed again)."""
    os.makedirs(report_dir, exist_ok=True)
    analysis = analyze(timeline, hazards) if timeline is not None else None
    hs = (
        [h.fields for h in analysis.hazards]
        if analysis is not None
        else [hazard_dict(h) for h in hazards or ()]
    )
    paths = {
        "text": os.path.join(report_dir, "report.txt"),
        "json": os.path.join(report_dir, "report.json"),
    }
    with open(paths["text"], "w", encoding="utf-8", newline="\n") as f:
        write_text(
            hs, f, timeline=analysis, sources=sources, read_sources=read_sources, fix_for=fix_for
        )
    write_json(
        paths["json"],
        None if analysis is not None else hs,
        analysis,
        meta,
        sources=sources,
        read_sources=read_sources,
    )
    if analysis is not None:
        paths["chrome_trace"] = os.path.join(report_dir, "trace.json")
        paths["html"] = os.path.join(report_dir, "report.html")
        write_chrome_trace(paths["chrome_trace"], analysis)
        write_html(
            paths["html"],
            analysis,
            title=title,
            meta=meta,
            sources=sources,
            read_sources=read_sources,
        )
    return paths
