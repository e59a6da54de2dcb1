"""The JSON report (schema ``esper-lifetimes-report``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import IO, Any

from esper_lifetimes.reports._common import (
    Sources,
    generator_info,
    jsonable,
    streams_of,
    summary_of,
    write_file,
)
from esper_lifetimes.reports.analysis import Analysis, analysis_for, hazard_list
from esper_lifetimes.reports.timeline import Timeline

SCHEMA_NAME = "esper-lifetimes-report"
"""The JSON report's ``schema`` value."""

SCHEMA_VERSION = 1
"""The JSON report's ``version``: bumped whenever a field is added, removed or changes meaning."""


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON report, version :data:`SCHEMA_VERSION`."""
    path = resources.files("esper_lifetimes").joinpath(
        "schemas", f"report-v{SCHEMA_VERSION}.schema.json"
    )
    return json.loads(path.read_text(encoding="utf-8"))


def report_dict(
    hazards: Iterable[Any] | None,
    timeline: Timeline | Analysis | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
) -> dict[str, Any]:
    """The JSON report as a dict (see ``docs/REPORTS.md`` and the schema)."""
    analysis = analysis_for(timeline, hazards)
    hs = hazard_list(hazards, analysis)
    placed = analysis.hazards if analysis is not None else None
    src = Sources(sources, read_sources)
    out_meta: dict[str, Any] = {}
    if analysis is not None:
        out_meta.update(analysis.timeline.meta)
    out_meta.update(meta or {})
    items = []
    for i, h in enumerate(hs):
        item: dict[str, Any] = {"id": i + 1}
        item.update(h)
        item["streams"] = streams_of(h)
        code = {}
        for name in ("alloc_site", "use_site", "free_site", "other_site"):
            text = src.line(h[name])
            if text is not None:
                code[name] = text
        item["source_lines"] = code
        if placed is not None:
            p = placed[i]
            item["opened_at"] = p.opened_seq
            item["occurrences_at"] = list(p.occurrences)
            item["anchors"] = [
                {k: x[k] for k in ("role", "seq", "stream", "site", "storage")} for x in p.anchors
            ]
            for x in item["anchors"]:
                x["stream_name"] = (
                    None if x["stream"] is None else analysis.stream_name(x["stream"])
                )
        else:
            item["opened_at"] = None
            item["occurrences_at"] = []
            item["anchors"] = []
        items.append(item)
    doc: dict[str, Any] = {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "generator": generator_info(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "meta": jsonable(out_meta),
        "summary": summary_of(hs),
        "hazards": items,
        "timeline": None,
    }
    if analysis is not None:
        tl = analysis.timeline
        doc["timeline"] = {
            "events": len(tl),
            "dropped": tl.dropped,
            "clock": "wall" if analysis.has_wall_clock() else "sequence",
            "duration_us": _duration_us(analysis),
            "storages": len(analysis.storages),
            "rejected": [
                {"seq": seq, "op": op, "error": err} for seq, op, err in analysis.rejected
            ],
            "streams": [
                {
                    "handle": s.handle,
                    "name": s.name,
                    "virtual": s.virtual,
                    "storages": sum(1 for st in analysis.storages if st.stream == s.handle),
                }
                for s in analysis.streams.values()
            ],
        }
    return doc


def _duration_us(a: Analysis) -> float | None:
    if not a.has_wall_clock() or not len(a.timeline):
        return None
    return (a.timeline._events[-1][0] - a.timeline._events[0][0]) / 1000


def write_json(
    path: str | os.PathLike | IO[str],
    hazards: Iterable[Any] | None,
    timeline: Timeline | Analysis | None = None,
    meta: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write the JSON report (schema ``esper-lifetimes-report`` version 1); returns it.

    ``path`` is a path or an open text file. ``meta`` is a JSON object copied into
    ``meta`` (the command line, the program, ...). Hazards are placed on the timeline when
    one is given; ``hazards=None`` reports the hazards found by replaying it.
    """
    doc = report_dict(hazards, timeline, meta, **kwargs)
    write_file(path, json.dumps(doc, indent=2) + "\n")
    return doc
