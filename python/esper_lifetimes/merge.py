"""One report from the reports of every rank of a distributed run.

Each rank of a ``torchrun`` job tracked by ``esper-lifetimes run --report DIR`` writes its
own report into ``DIR/rank<R>/`` (``report.json`` with ``meta.rank`` and
``meta.world_size``, and with a timeline ``trace.json`` and ``report.html``).
``esper-lifetimes merge DIR`` reads them all and writes one report:

* hazards that several ranks share (same kind, same source lines, same streams once the
  ``(rank N)`` tag is taken out of the stream names) are one merged hazard listing its
  ranks, with the sum of the counts;
* each hazard names the collective it involves (from the internal stream's name,
  ``gloo:group0:cpu all_reduce (rank 1)``: ``all_reduce``) and its source lines;
* text (stdout), ``--json`` (stdout), and with ``--report OUT``: ``report.txt``,
  ``report.json`` (schema ``esper-lifetimes-merged-report``, version 1), ``trace.json``
  (a Chrome trace with one process, a track group, per rank) and ``report.html``.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "RankReport",
    "find_rank_reports",
    "merge",
    "write_text",
    "chrome_trace",
    "html_report",
    "write_all",
    "strip_rank",
    "collective_of",
    "env_rank",
    "rank_dir",
    "rank_file",
    "main",
]

SCHEMA_NAME = "esper-lifetimes-merged-report"
SCHEMA_VERSION = 1

_RANK_TAG = re.compile(r" \(rank \d+\)$")
# internal streams of esper_lifetimes.distributed: "<backend>:<group>:<device>[:p2p] <coll>"
_INTERNAL = re.compile(r"^[\w.-]+:[\w.-]+:[\w.-]+(?::p2p)? (?P<coll>.+?)(?: \(rank \d+\))?$")
_SITE_FIELDS = ("alloc_site", "use_site", "other_site", "free_site")
_STREAM_FIELDS = ("alloc_stream_name", "use_stream_name", "other_stream_name")


def env_rank() -> tuple[int, int] | None:
    """(rank, world size) from the environment ``torchrun`` sets (``RANK``,
    ``WORLD_SIZE``), or None."""
    r, w = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    if r.isdigit() and w.isdigit():
        return int(r), int(w)
    return None


def rank_dir(path: str, rank: int | None = None) -> str:
    """``path/rank<R>`` for rank R of a distributed run (``rank`` or the environment's),
    else ``path``: each rank writes its own report."""
    if rank is None:
        info = env_rank()
        if info is None:
            return path
        rank = info[0]
    return os.path.join(path, f"rank{rank}")


def rank_file(path: str) -> str:
    """``hz.jsonl`` -> ``hz.rank<R>.jsonl`` for rank R of a distributed run (from the
    environment), else ``path``: each rank of ``ESPER_LIFETIMES=...,report=PATH`` under
    ``torchrun`` appends to its own file."""
    info = env_rank()
    if info is None:
        return path
    base, ext = os.path.splitext(path)
    return f"{base}.rank{info[0]}{ext}"


def strip_rank(name: str | None) -> str | None:
    """``"nccl:group0:dev0 all_reduce (rank 1)"`` -> ``"nccl:group0:dev0 all_reduce"``."""
    return _RANK_TAG.sub("", name) if name else name


def collective_of(stream_name: str | None) -> str | None:
    """The collective an internal stream's name names (``all_reduce``), or None."""
    if not stream_name:
        return None
    m = _INTERNAL.match(stream_name)
    return m.group("coll") if m else None


class RankReport:
    """One rank's ``report.json`` (and ``trace.json`` when present)."""

    __slots__ = ("rank", "world_size", "path", "report", "trace")

    def __init__(self, path: str, report: dict[str, Any], trace: dict[str, Any] | None):
        meta = report.get("meta") or {}
        self.path = path
        self.report = report
        self.trace = trace
        rank = meta.get("rank")
        if rank is None:
            m = re.search(r"rank(\d+)$", os.path.basename(os.path.normpath(path)))
            rank = int(m.group(1)) if m else 0
        self.rank = int(rank)
        ws = meta.get("world_size")
        self.world_size = int(ws) if ws is not None else None


def _load(path: str) -> RankReport:
    with open(os.path.join(path, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    if report.get("schema") != "esper-lifetimes-report":
        raise ValueError(f"{path}/report.json is not an esper-lifetimes report")
    trace = None
    tpath = os.path.join(path, "trace.json")
    if os.path.isfile(tpath):
        with open(tpath, encoding="utf-8") as f:
            trace = json.load(f)
    return RankReport(path, report, trace)


def find_rank_reports(dirs: Iterable[str]) -> list[RankReport]:
    """The rank reports under ``dirs``: each a rank directory (holding ``report.json``) or
    a directory of them (``rank0/``, ``rank1/``, ...); sorted by rank. Raises
    ``FileNotFoundError`` when one holds none, ``ValueError`` on a bad report or two
    reports of one rank."""
    found: list[RankReport] = []
    for d in dirs:
        if os.path.isfile(os.path.join(d, "report.json")):
            found.append(_load(d))
            continue
        subs = []
        if os.path.isdir(d):
            for name in os.listdir(d):
                p = os.path.join(d, name)
                if os.path.isfile(os.path.join(p, "report.json")):
                    subs.append(p)
        if not subs:
            raise FileNotFoundError(f"no rank reports (report.json) in {d!r}")
        found.extend(_load(p) for p in sorted(subs))
    found.sort(key=lambda r: r.rank)
    ranks = [r.rank for r in found]
    dup = sorted({r for r in ranks if ranks.count(r) > 1})
    if dup:
        raise ValueError(f"two reports of rank {dup[0]}")
    return found


def _key(h: dict[str, Any]) -> tuple[Any, ...]:
    return (
        h.get("kind"),
        *(h.get(f) for f in _SITE_FIELDS),
        *(strip_rank(h.get(f)) for f in _STREAM_FIELDS),
    )


def merge(reports: Sequence[RankReport]) -> dict[str, Any]:
    """The merged report (a JSON-able dict)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    unseen: dict[str, dict[str, int]] = {}
    world = None
    for rr in reports:
        if rr.world_size is not None:
            world = rr.world_size if world is None else max(world, rr.world_size)
        meta = rr.report.get("meta") or {}
        if meta.get("unseen"):
            unseen[str(rr.rank)] = dict(meta["unseen"])
        for h in rr.report.get("hazards", ()):
            k = _key(h)
            m = merged.get(k)
            if m is None:
                m = {
                    "kind": h.get("kind"),
                    "severity": h.get("severity"),
                    "count": 0,
                    "ranks": [],
                    **{f: h.get(f) for f in _SITE_FIELDS},
                    **{f: strip_rank(h.get(f)) for f in _STREAM_FIELDS},
                    "collectives": [],
                    "source_lines": dict(h.get("source_lines") or {}),
                    "live": False,
                    "per_rank": {},
                }
                merged[k] = m
            m["count"] += int(h.get("count", 1))
            if rr.rank not in m["ranks"]:
                m["ranks"].append(rr.rank)
            m["live"] = m["live"] or bool(h.get("live"))
            for f in _STREAM_FIELDS:
                c = collective_of(h.get(f))
                if c and c not in m["collectives"]:
                    m["collectives"].append(c)
            for f, line in (h.get("source_lines") or {}).items():
                m["source_lines"].setdefault(f, line)
            m["per_rank"][str(rr.rank)] = {
                "count": int(h.get("count", 1)),
                "ptr": h.get("ptr"),
                "nbytes": h.get("nbytes"),
                "live": bool(h.get("live")),
                "message": h.get("message"),
            }
    hazards = sorted(
        merged.values(),
        key=lambda m: (m["severity"] != "error", m["kind"], m["use_site"] or "", m["ranks"]),
    )
    for i, m in enumerate(hazards, 1):
        m["id"] = i
        m["ranks"].sort()
    errors = sum(1 for m in hazards if m["severity"] == "error")
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "world_size": world,
        "ranks": [
            {"rank": rr.rank, "path": rr.path, "hazards": len(rr.report.get("hazards", ()))}
            for rr in reports
        ],
        "summary": {
            "distinct": len(hazards),
            "errors": errors,
            "advice": len(hazards) - errors,
            "shared": sum(1 for m in hazards if len(m["ranks"]) > 1),
        },
        "hazards": hazards,
        "unseen": unseen,
    }


def _roles(kind: str) -> tuple[tuple[str, str, str | None], ...]:
    try:
        from esper_lifetimes.reports import KINDS

        return tuple(KINDS[kind].roles)
    except Exception:
        return (
            ("allocated", "alloc_site", "alloc_stream_name"),
            ("used", "use_site", "use_stream_name"),
            ("other", "other_site", "other_stream_name"),
            ("freed", "free_site", None),
        )


def _ranks_text(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def write_text(merged: dict[str, Any], out: IO[str]) -> None:
    """The merged report as text."""
    ranks = [r["rank"] for r in merged["ranks"]]
    ws = merged.get("world_size")
    out.write(
        f"esper-lifetimes merge: {len(ranks)} rank report{'s' * (len(ranks) != 1)}"
        f" ({_ranks_text(ranks)}; world size {ws if ws is not None else '?'})\n"
    )
    s = merged["summary"]
    out.write(
        f"esper-lifetimes: {s['distinct']} distinct hazard{'s' * (s['distinct'] != 1)}: "
        f"{s['errors']} error{'s' * (s['errors'] != 1)}, {s['advice']} advice; "
        f"{s['shared']} shared by several ranks\n"
    )
    for m in merged["hazards"]:
        out.write("\n")
        coll = f"; collective {', '.join(m['collectives'])}" if m["collectives"] else ""
        live = "  [live]" if m["live"] else ""
        out.write(
            f"#{m['id']} {m['kind']} ({m['severity']}) on {_ranks_text(m['ranks'])}"
            f"{coll}  x{m['count']}{live}\n"
        )
        rows = []
        for label, sf, nf in _roles(m["kind"]):
            site = m.get(sf)
            if not site:
                continue
            stream = m.get(nf) if nf else None
            rows.append((label, site, f"on {stream}" if stream else "", m["source_lines"].get(sf)))
        if rows:
            w0 = max(len(r[0]) for r in rows)
            w1 = max(len(r[1]) for r in rows)
            w2 = max(len(r[2]) for r in rows)
            for label, site, on, code in rows:
                line = f"    {label:<{w0}}  {site:<{w1}}  {on:<{w2}}"
                out.write((f"{line}  | {code}" if code else line.rstrip()) + "\n")
        for r, pr in sorted(m["per_rank"].items(), key=lambda kv: int(kv[0])):
            size = f"{pr['nbytes']} bytes" if pr.get("nbytes") is not None else ""
            ptr = f"storage {pr['ptr']:#x} " if isinstance(pr.get("ptr"), int) else ""
            out.write(f"    rank {r}: x{pr['count']} {ptr}({size})\n".replace(" ()", ""))
    if merged.get("unseen"):
        out.write("\nran unseen (collectives issued from C++, modelled on the current stream):\n")
        for r, items in sorted(merged["unseen"].items(), key=lambda kv: int(kv[0])):
            for what, n in sorted(items.items()):
                out.write(f"    rank {r}: {what} x{n}\n")


def chrome_trace(reports: Sequence[RankReport]) -> dict[str, Any]:
    """The ranks' Chrome traces in one: each rank's events under its own process ids
    (one track group per rank, named ``rank R: ...``)."""
    events: list[dict[str, Any]] = []
    for rr in reports:
        tr = rr.trace
        if not tr:
            continue
        evs = tr.get("traceEvents", tr) if isinstance(tr, dict) else tr
        base = (rr.rank + 1) * 100
        pids: dict[Any, int] = {}
        for e in evs:
            e = dict(e)
            pid = e.get("pid", 0)
            if pid not in pids:
                pids[pid] = base + len(pids)
            e["pid"] = pids[pid]
            if e.get("ph") == "M" and e.get("name") == "process_name":
                e["args"] = {"name": f"rank {rr.rank}: {e.get('args', {}).get('name', '')}"}
            elif e.get("ph") == "M" and e.get("name") == "process_sort_index":
                e["args"] = {"sort_index": base + int(e.get("args", {}).get("sort_index", 0))}
            events.append(e)
        for pid in pids.values():
            if not any(
                e.get("pid") == pid and e.get("name") == "process_name" and e.get("ph") == "M"
                for e in events
            ):
                events.append(
                    {
                        "name": "process_name",
                        "ph": "M",
                        "pid": pid,
                        "tid": 0,
                        "args": {"name": f"rank {rr.rank}"},
                    }
                )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"esper_lifetimes": "merged", "ranks": [r.rank for r in reports]},
    }


def html_report(merged: dict[str, Any], title: str = "esper-lifetimes: merged report") -> str:
    """A self-contained HTML page of the merged report (each rank's own report.html
    holds its timeline)."""
    esc = html.escape
    ranks = [r["rank"] for r in merged["ranks"]]
    s = merged["summary"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
        ".error{color:#c92a2a}.advice{color:#1864ab}code{background:#f1f3f5}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{len(ranks)} ranks ({esc(', '.join(map(str, ranks)))}), world size "
        f"{esc(str(merged.get('world_size')))}: {s['distinct']} distinct hazards, "
        f"{s['errors']} errors, {s['advice']} advice, {s['shared']} shared by several "
        "ranks.</p>",
    ]
    links = [
        f"<a href='{esc(os.path.join(os.path.basename(os.path.normpath(r['path'])), 'report.html'))}'>"
        f"rank {r['rank']}</a>"
        for r in merged["ranks"]
    ]
    parts.append(f"<p>Each rank's timeline: {' '.join(links)}</p>")
    parts.append("<table><tr><th>#</th><th>kind</th><th>ranks</th><th>collective</th>")
    parts.append("<th>count</th><th>where</th></tr>")
    for m in merged["hazards"]:
        rows = []
        for label, sf, nf in _roles(m["kind"]):
            if m.get(sf):
                code = m["source_lines"].get(sf) or ""
                on = f" on {m.get(nf)}" if nf and m.get(nf) else ""
                rows.append(
                    f"{esc(label)} <code>{esc(m[sf])}</code>{esc(on)}<br><code>{esc(code)}</code>"
                )
        parts.append(
            f"<tr><td>{m['id']}</td><td class='{esc(m['severity'])}'>{esc(m['kind'])}</td>"
            f"<td>{esc(', '.join(map(str, m['ranks'])))}</td>"
            f"<td>{esc(', '.join(m['collectives']))}</td><td>{m['count']}</td>"
            f"<td>{'<br>'.join(rows)}</td></tr>"
        )
    parts.append("</table>")
    if merged.get("unseen"):
        parts.append("<h2>Ran unseen</h2><ul>")
        for r, items in sorted(merged["unseen"].items(), key=lambda kv: int(kv[0])):
            for what, n in sorted(items.items()):
                parts.append(f"<li>rank {esc(r)}: <code>{esc(what)}</code> x{n}</li>")
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_all(out_dir: str, reports: Sequence[RankReport]) -> dict[str, str]:
    """Writes report.txt, report.json, trace.json and report.html into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    merged = merge(reports)
    paths = {
        "text": os.path.join(out_dir, "report.txt"),
        "json": os.path.join(out_dir, "report.json"),
        "chrome_trace": os.path.join(out_dir, "trace.json"),
        "html": os.path.join(out_dir, "report.html"),
    }
    with open(paths["text"], "w", encoding="utf-8") as f:
        write_text(merged, f)
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    with open(paths["chrome_trace"], "w", encoding="utf-8") as f:
        json.dump(chrome_trace(reports), f)
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(html_report(merged))
    return paths


def main(
    dirs: Sequence[str],
    report: str | None,
    as_json: bool,
    out: IO[str],
    err: IO[str],
) -> int:
    """``esper-lifetimes merge DIR... [--report OUT] [--json]``: 0 when no rank found an
    error, 1 when one did, 2 on bad input."""
    try:
        reports = find_rank_reports(dirs)
    except (OSError, ValueError) as exc:
        err.write(f"esper-lifetimes: error: {exc}\n")
        return 2
    merged = merge(reports)
    if as_json:
        json.dump(merged, out, indent=1)
        out.write("\n")
    else:
        write_text(merged, out)
    if report:
        try:
            paths = write_all(report, reports)
        except OSError as exc:
            err.write(f"esper-lifetimes: error: cannot write the reports to {report!r}: {exc}\n")
            return 2
        names = ", ".join(os.path.basename(p) for p in paths.values())
        err.write(f"esper-lifetimes: merged reports written to {report}: {names}\n")
    return 1 if merged["summary"]["errors"] else 0
