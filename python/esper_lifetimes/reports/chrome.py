"""The Chrome trace-event timeline (Perfetto, chrome://tracing)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import IO, Any

from esper_lifetimes.reports._common import (
    generator_info,
    hex_addr,
    roles_of,
    size_text,
    streams_of,
    write_file,
)
from esper_lifetimes.reports.analysis import Analysis, analysis_for
from esper_lifetimes.reports.timeline import Timeline

CHROME_TRACE_SCHEMA = "esper-lifetimes-chrome-trace"
"""``otherData.schema`` of the Chrome trace (its ``otherData.version`` is 1)."""


# --------------------------------------------------------------------------------------
# Chrome trace-event format (Perfetto, chrome://tracing)
# --------------------------------------------------------------------------------------

_PID = 1


def chrome_trace(
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    *,
    clock: str = "auto",
) -> dict[str, Any]:
    """The timeline as a Chrome trace-event JSON object (``{"traceEvents": [...]}``).

    One process; per stream one thread (track) carrying its work (reads, writes,
    copies, record_stream, event records and waits) and the hazards that opened on it,
    followed by threads holding that stream's storage lifetimes as complete events (as
    many as needed so that lifetimes on one thread never overlap); one host thread for
    synchronizations, queries and host accesses. Waits and syncs are also flow arrows,
    and each hazard is an instant event with a flow arrow from its uncovered use.
    ``clock``: ``"wall"`` (the recorded timestamps), ``"sequence"`` (1 us per event) or
    ``"auto"`` (wall when every event has a timestamp).
    """
    a = analysis_for(timeline, hazards)
    assert a is not None
    n = len(a.timeline)
    wall = a.has_wall_clock() if clock == "auto" else clock == "wall"
    if wall and not a.has_wall_clock():
        raise ValueError("the timeline has no timestamps: use clock='sequence'")
    if wall:
        t0 = a.timeline._events[0][0] if n else 0

        def ts(seq: int) -> float:
            seq = min(max(seq, 0), n - 1)
            return round((a.timeline._events[seq][0] - t0) / 1000, 3)

        end_ts = ts(n - 1) + 1 if n else 1
    else:

        def ts(seq: int) -> float:
            return float(seq)

        end_ts = float(n)

    ev: list[dict[str, Any]] = []
    max_rows = max((s.rows for s in a.streams.values()), default=0)
    stride = max_rows + 1
    lanes = sorted(a.streams.values(), key=lambda s: s.lane)
    host_tid = 1 + len(lanes) * stride

    def work_tid(stream: int | None) -> int:
        return host_tid if stream is None else 1 + a.streams[stream].lane * stride

    ev.append(_meta("process_name", 0, {"name": "esper-lifetimes: CUDA streams"}))
    ev.append(_meta("process_sort_index", 0, {"sort_index": 0}))
    for s in lanes:
        tid = work_tid(s.handle)
        label = s.name + (" (virtual)" if s.virtual else "")
        ev.append(_meta("thread_name", tid, {"name": label}))
        ev.append(_meta("thread_sort_index", tid, {"sort_index": tid}))
        for row in range(s.rows):
            ev.append(_meta("thread_name", tid + 1 + row, {"name": f"{s.name} storages"}))
            ev.append(_meta("thread_sort_index", tid + 1 + row, {"sort_index": tid + 1 + row}))
    ev.append(_meta("thread_name", host_tid, {"name": "host"}))
    ev.append(_meta("thread_sort_index", host_tid, {"sort_index": host_tid}))

    for st in a.storages:
        start = ts(st.alloc_seq)
        stop = ts(st.free_seq) if st.free_seq is not None else end_ts
        args = {
            "storage": st.id,
            "ptr": hex_addr(st.ptr),
            "nbytes": st.nbytes,
            "alloc_stream": a.stream_name(st.stream),
            "alloc_site": st.alloc_site,
            "free_site": st.free_site,
            "freed": st.free_seq is not None,
            "uses": len(st.uses),
            "streams_used_on": sorted({a.stream_name(u[1]) or "" for u in st.uses}),
            "record_stream": sorted({a.stream_name(r[1]) or "" for r in st.records}),
            "hazards": list(st.hazards),
        }
        item = {
            "name": f"storage {hex_addr(st.ptr)} ({size_text(st.nbytes)})",
            "cat": "storage",
            "ph": "X",
            "ts": start,
            "dur": max(stop - start, 0.0),
            "pid": _PID,
            "tid": work_tid(st.stream) + 1 + st.row,
            "args": args,
        }
        if st.hazards:
            item["cname"] = "terrible"
        ev.append(item)

    for seq, what, stream, info in a.marks:
        args = {"seq": seq}
        for k, v in info.items():
            if k in ("ptr", "host_ptr", "event"):
                v = hex_addr(v)
            elif k in ("stream", "waited"):
                v = a.stream_name(v)
            args[k] = v
        name = what
        if what == "wait_stream":
            name = f"wait_stream({a.stream_name(info['waited'])})"
        elif what in ("stream_synchronize", "stream_query"):
            name = f"{what}({a.stream_name(info['stream'])})"
        ev.append(
            {
                "name": name,
                "cat": _mark_cat(what),
                "ph": "i",
                "s": "t",
                "ts": ts(seq),
                "pid": _PID,
                "tid": work_tid(stream),
                "args": args,
            }
        )

    flow_id = 0
    for what, src, src_seq, dst, dst_seq in a.links:
        if what == "device_synchronize":
            continue
        flow_id += 1
        ev.append(_flow("s", what, flow_id, ts(src_seq), work_tid(src)))
        ev.append(_flow("f", what, flow_id, ts(dst_seq), work_tid(dst)))

    for h in a.hazards:
        d = h.fields
        if h.opened_seq is None:
            continue
        args = {
            "id": h.index,
            "kind": d["kind"],
            "severity": d["severity"],
            "count": d["count"],
            "live": d["live"],
            "message": d["message"],
            "streams": streams_of(d),
            "sites": {r: s for r, s, _ in roles_of(d) if s is not None},
        }
        paths = {p[-1]["seq"]: p for p in h.paths if p}
        for n_occ, seq in enumerate(h.occurrences):
            path = paths.get(seq) or []
            opened = next((x for x in path if x["seq"] == seq), None)
            tid = work_tid(opened["stream"] if opened else None)
            item = {
                "name": f"HAZARD {d['kind']} #{h.index}" + (" (repeat)" if n_occ else ""),
                "cat": f"hazard,{d['severity']}",
                "ph": "i",
                "s": "t",
                "ts": ts(seq),
                "pid": _PID,
                "tid": tid,
                "cname": "terrible" if d["severity"] == "error" else "yellow",
                "args": dict(args, seq=seq, occurrence=n_occ + 1),
            }
            if n_occ:
                item["args"] = {"id": h.index, "seq": seq, "occurrence": n_occ + 1}
            ev.append(item)
            if path and path[0]["seq"] != seq:
                flow_id += 1
                first = path[0]
                ev.append(
                    _flow("s", "hazard", flow_id, ts(first["seq"]), work_tid(first["stream"]))
                )
                ev.append(_flow("f", "hazard", flow_id, ts(seq), tid))

    return {
        "traceEvents": ev,
        "displayTimeUnit": "ns" if not wall else "ms",
        "otherData": {
            "schema": CHROME_TRACE_SCHEMA,
            "version": 1,
            "generator": generator_info(),
            "clock": "wall" if wall else "sequence",
            "events": n,
            "dropped": a.timeline.dropped,
            "hazards": len(a.hazards),
        },
    }


def _meta(name: str, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": _PID, "tid": tid, "args": args}


def _flow(ph: str, cat: str, fid: int, ts: float, tid: int) -> dict[str, Any]:
    e = {"name": cat, "cat": cat, "ph": ph, "id": fid, "ts": ts, "pid": _PID, "tid": tid}
    if ph == "f":
        e["bp"] = "e"
    return e


def _mark_cat(what: str) -> str:
    if what in ("read", "write"):
        return "use"
    if what.startswith("copy_"):
        return "copy"
    if what.startswith("host_"):
        return "host"
    if what in ("record_stream",):
        return "lifetime"
    return "sync"


def write_chrome_trace(
    path: str | os.PathLike | IO[str],
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write :func:`chrome_trace` to ``path`` (open it in https://ui.perfetto.dev or
    chrome://tracing); returns the object written."""
    doc = chrome_trace(timeline, hazards, **kwargs)
    write_file(path, json.dumps(doc, separators=(",", ":")) + "\n")
    return doc
