(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var NS = ["http:", "", "www.w3.org", "2000", "svg"].join("/");
  var WORK_H = 30, ROW_H = 12, BAR_H = 9, LANE_PAD = 6, AXIS_H = 40, PAD_X = 14;
  var MAX_ROWS = 14, MAX_PATHS = 400;
  var MARK_NAMES = ["read", "write", "copy_to_host", "copy_from_host", "record_stream",
    "event_record", "host read", "host write", "query", "wait", "synchronize",
    "device_synchronize"];
  var LINK_NAMES = ["wait_stream", "event wait", "synchronize", "device_synchronize"];
  var C = { read: "#8b95a1", write: "#1f2937", copy: "#0b7285", rec: "#6741d9",
    ev: "#495057", wait: "#4dabf7", sync: "#2f9e44" };
  var scroll = document.getElementById("scroll");
  var labels = document.getElementById("labels");
  var tip = document.getElementById("tip");
  var px = 0, fitPx = 0;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]); }
    if (parent) parent.appendChild(e);
    return e;
  }
  function title(e, text) { var t = el("title", {}, e); t.textContent = text; return e; }
  function site(i) { return i >= 0 ? D.sites[i] : null; }
  function siteLine(i) {
    if (i < 0) return "?";
    var code = D.code[i];
    return D.sites[i] + (code ? "   " + code : "");
  }
  function laneName(i) { return D.lanes[i] ? D.lanes[i].name : "?"; }
  function kindColor(k) { return (D.kinds[k] || { color: "#495057" }).color; }

  // lane geometry
  var laneY = [], laneH = [], y = AXIS_H;
  D.lanes.forEach(function (l, i) {
    var rows = Math.min(l.rows, MAX_ROWS);
    var h = Math.max(WORK_H + (rows ? rows * ROW_H + LANE_PAD : 0) + (l.host ? 0 : 4), 40);
    laneY.push(y); laneH.push(h); y += h;
  });
  var totalH = y + 6;
  function workY(lane) { return laneY[lane] + WORK_H / 2; }
  function rowY(lane, row) {
    return laneY[lane] + WORK_H + Math.min(row, MAX_ROWS - 1) * ROW_H + BAR_H / 2;
  }
  function X(col) { return PAD_X + (col + 0.5) * px; }

  // labels column
  D.lanes.forEach(function (l, i) {
    var d = document.createElement("div");
    d.className = "lab";
    d.style.top = laneY[i] + "px";
    d.style.height = laneH[i] + "px";
    var b = document.createElement("b");
    b.textContent = l.name + (l.virtual ? " (virtual)" : "");
    d.appendChild(b);
    var s = document.createElement("span");
    s.textContent = l.host ? "syncs, host access" : l.handle;
    d.appendChild(s);
    d.title = l.host ? "the host: synchronizations, queries, host reads and writes" :
      l.name + " (" + l.handle + "): its work on top, the storages allocated on it below" +
      (l.rows > MAX_ROWS ? " (" + l.rows + " rows, drawn on " + MAX_ROWS + ")" : "");
    labels.appendChild(d);
  });
  labels.style.height = totalH + "px";
  var axisLab = document.createElement("div");
  axisLab.className = "lab";
  axisLab.style.top = "0px"; axisLab.style.height = AXIS_H + "px";
  axisLab.style.color = "#6b7280"; axisLab.style.fontSize = "11px";
  axisLab.style.paddingTop = (AXIS_H - 20) + "px";
  axisLab.textContent = D.colTimes ? "time" : "event";
  labels.appendChild(axisLab);

  function showTip(evt, text) {
    tip.textContent = text; tip.hidden = false;
    var x = evt.clientX + 14, yy = evt.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth - 8) x = evt.clientX - tip.offsetWidth - 14;
    if (yy + tip.offsetHeight > window.innerHeight - 8) yy = evt.clientY - tip.offsetHeight - 14;
    tip.style.left = x + "px"; tip.style.top = yy + "px";
  }
  function hideTip() { tip.hidden = true; }
  function hover(e, textFn) {
    e.addEventListener("mousemove", function (evt) { showTip(evt, textFn()); });
    e.addEventListener("mouseleave", hideTip);
  }

  function arrowDefs(svg) {
    var defs = el("defs", {}, svg);
    function marker(id, color) {
      var m = el("marker", { id: id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
        markerHeight: 7, orient: "auto-start-reverse" }, defs);
      el("path", { d: "M0,0 L10,5 L0,10 z", fill: color }, m);
    }
    marker("arr-wait", C.wait); marker("arr-sync", C.sync);
    Object.keys(D.kinds).forEach(function (k) { marker("arr-" + k, D.kinds[k].color); });
    marker("arr-other", "#495057");
  }

  function storageText(i) {
    var s = D.storages[i];
    var lines = ["storage " + s[4] + " (" + s[5] + " bytes)",
      "allocated on " + laneName(s[0]) + " at " + siteLine(s[6]),
      s[3] >= 0 ? "freed at " + siteLine(s[7]) : "not freed in this run",
      s[8] + " use" + (s[8] === 1 ? "" : "s") + (s[9].length ? " on " + s[9].map(laneName).join(", ") : "")];
    if (s[10].length) lines.push("record_stream: " + s[10].map(laneName).join(", "));
    if (s[11].length) lines.push("hazards: " + s[11].map(function (h) { return "#" + h; }).join(", "));
    return lines.join("\n");
  }
  function hazardText(h) {
    var lines = ["#" + h.id + "  " + h.kind + " (" + h.severity + ")" +
      (h.count > 1 ? "  x" + h.count : "") + (h.live ? "  live" : "")];
    h.roles.forEach(function (r) {
      lines.push("  " + r[0] + ": " + siteLine(r[1]) + (r[2] ? "  [" + r[2] + "]" : ""));
    });
    lines.push("", h.message);
    return lines.join("\n");
  }

  function anchorPoint(a) {
    // a = [role, lane, col, storage, site]
    var lane = a[1], col = a[2], sid = a[3];
    // points of a storage's life sit on its bar: its allocation, its free, the
    // allocation that reused its block or judged its free
    var onBar = a[0] === "free" || a[0] === "realloc" || a[0] === "judged" || a[0] === "alloc";
    if (onBar && sid !== null && sid >= 0 && D.storages[sid]) {
      var s = D.storages[sid];
      if (!D.lanes[s[0]].host) return [X(col), rowY(s[0], s[1])];
    }
    return [X(col), workY(lane)];
  }

  function draw() {
    scroll.textContent = "";
    var W = Math.max(scroll.clientWidth, PAD_X * 2 + D.cols * px);
    var svg = el("svg", { width: W, height: totalH, id: "timeline-svg",
      "class": "timeline-svg" }, scroll);
    arrowDefs(svg);
    // lanes
    var gl = el("g", { "class": "lanes" }, svg);
    D.lanes.forEach(function (l, i) {
      var g = el("g", { "class": "lane" + (l.host ? " host" : ""), "data-lane": i, "data-name": l.name }, gl);
      el("rect", { x: 0, y: laneY[i], width: W, height: laneH[i],
        fill: l.host ? "#f3f6f4" : (i % 2 ? "#fafbfc" : "#ffffff") }, g);
      el("line", { x1: 0, x2: W, y1: laneY[i] + laneH[i] - 0.5, y2: laneY[i] + laneH[i] - 0.5,
        stroke: "#e5e7eb" }, g);
      el("line", { x1: 0, x2: W, y1: workY(i), y2: workY(i), stroke: "#d9dee4",
        "stroke-dasharray": "2 3" }, g);
    });
    // axis
    var ga = el("g", { "class": "axis" }, svg);
    el("rect", { x: 0, y: 0, width: W, height: AXIS_H, fill: "#f8f9fb" }, ga);
    var step = niceStep(60 / px);
    for (var c = 0; c < D.cols; c += step) {
      el("line", { x1: X(c), x2: X(c), y1: AXIS_H - 5, y2: totalH, stroke: "#eef0f3" }, ga);
      var t = el("text", { x: X(c), y: AXIS_H - 6, "font-size": 10, fill: "#6b7280",
        "text-anchor": "middle" }, ga);
      t.textContent = D.colTimes ? fmtTime(D.colTimes[c]) : String(c);
    }
    // storages
    var gs = el("g", { "class": "storages" }, svg);
    var end = D.cols - 1;
    D.storages.forEach(function (s, i) {
      var x1 = X(s[2]) - px * 0.35, x2 = X(s[3] >= 0 ? s[3] : end) + (s[3] >= 0 ? px * 0.35 : px * 0.5);
      var hz = s[11].length > 0;
      var g = el("g", { "class": "storage" + (hz ? " hz" : "") + (s[3] < 0 ? " open" : ""),
        "data-storage": i }, gs);
      var r = el("rect", { "class": "bar", x: x1, y: rowY(s[0], s[1]) - BAR_H / 2,
        width: Math.max(x2 - x1, 2), height: BAR_H, rx: 2 }, g);
      if (hz) {
        var hh = D.hazards.filter(function (h) { return h.id === s[11][0]; })[0];
        if (hh) r.style.stroke = kindColor(hh.kind);
      }
      // uses from other streams: dots on the bar
      hover(g, function () { return storageText(i); });
      g.addEventListener("mouseenter", function () { highlightStorage(i, true); });
      g.addEventListener("mouseleave", function () { highlightStorage(i, false); });
    });
    // foreign-stream uses as dots on the storage bars
    var gu = el("g", { "class": "uses" }, svg);
    var seenDot = {};
    D.marks.forEach(function (m) {
      if (m[2] > 1 || m[4] < 0) return;
      var s = D.storages[m[4]];
      if (!s || s[0] === m[1]) return;
      var key = m[4] + ":" + Math.round(X(m[0]));
      if (seenDot[key]) return; seenDot[key] = 1;
      el("circle", { cx: X(m[0]), cy: rowY(s[0], s[1]), r: Math.min(3, BAR_H / 2 - 0.5),
        fill: m[2] ? C.write : "#5c6b7a" }, gu);
    });
    // waits and syncs
    var gy = el("g", { "class": "sync-layer" + (document.getElementById("show-sync").checked ? "" : " hidden") }, svg);
    D.links.forEach(function (k) {
      var type = k[0];
      if (type === 3) {
        var g3 = el("g", { "class": "sync device" }, gy);
        el("line", { x1: X(k[4]), x2: X(k[4]), y1: AXIS_H, y2: workY(k[3]) - 7, stroke: C.sync,
          "stroke-width": 1.4, "stroke-dasharray": "5 3", "marker-end": "url(#arr-sync)" }, g3);
        title(g3, "torch.cuda.synchronize(): the host waits for every stream");
        return;
      }
      var x1 = X(k[2]), y1 = workY(k[1]), x2 = X(k[4]), y2 = workY(k[3]);
      var color = type === 2 ? C.sync : C.wait;
      var g = el("g", { "class": type === 2 ? "sync" : "wait" }, gy);
      var dy = y2 > y1 ? -7 : 7;
      var mx = (x1 + x2) / 2;
      el("path", { d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + (y2 + dy) + " " + x2 + "," + (y2 + dy),
        fill: "none", stroke: color, "stroke-width": 1.3, "marker-end": type === 2 ? "url(#arr-sync)" : "url(#arr-wait)",
        opacity: 0.85 }, g);
      title(g, LINK_NAMES[type] + ": " + laneName(k[3]) + " waits for " + laneName(k[1]));
    });
    // marks (deduplicated per pixel)
    var gm = el("g", { "class": "marks" }, svg);
    var seen = {};
    D.marks.forEach(function (m) {
      var x = X(m[0]), yy = workY(m[1]), type = m[2];
      var key = m[1] + ":" + type + ":" + Math.round(x);
      if (seen[key]) return; seen[key] = 1;
      var e;
      if (type <= 1) {
        e = el("rect", { x: x - Math.max(1, Math.min(px * 0.3, 2.5)), y: yy - 9,
          width: 2 * Math.max(1, Math.min(px * 0.3, 2.5)), height: 18, rx: 1,
          fill: type ? C.write : C.read, "class": "mark use" }, gm);
      } else if (type <= 3) {
        e = el("path", { d: "M" + (x - 5) + "," + (yy - 6) + " L" + (x + 5) + "," + (yy - 6) +
          " L" + x + "," + (yy + 7) + " z", fill: C.copy, "class": "mark copy" }, gm);
        if (type === 3) e.setAttribute("transform", "rotate(180 " + x + " " + yy + ")");
      } else if (type === 4) {
        e = el("path", { d: "M" + x + "," + (yy - 7) + " l6,7 l-6,7 l-6,-7 z", fill: "#fff",
          stroke: C.rec, "stroke-width": 1.8, "class": "mark record" }, gm);
      } else if (type === 5) {
        e = el("circle", { cx: x, cy: yy, r: 4, fill: "#fff", stroke: C.ev, "stroke-width": 1.5,
          "class": "mark event" }, gm);
      } else if (type === 6 || type === 7) {
        e = el("rect", { x: x - 5, y: yy - 5, width: 10, height: 10, rx: 2,
          fill: type === 7 ? "#1f2937" : "#fff", stroke: "#1f2937", "stroke-width": 1.5,
          "class": "mark host" }, gm);
      } else if (type === 8) {
        e = el("circle", { cx: x, cy: yy, r: 4, fill: "#fff", stroke: "#868e96",
          "stroke-dasharray": "2 1.5", "class": "mark query" }, gm);
      } else if (type === 9) {
        e = el("circle", { cx: x, cy: yy, r: 3, fill: C.wait, "class": "mark wait" }, gm);
      } else {
        e = el("circle", { cx: x, cy: yy, r: 3.5, fill: C.sync, "class": "mark sync" }, gm);
      }
      var txt = MARK_NAMES[type] + (m[3] >= 0 ? " at " + siteLine(m[3]) : "") +
        (type <= 1 && m[4] >= 0 ? "\nstorage " + D.storages[m[4]][4] : "") +
        ((type === 9 || type === 10 || type === 8) && m[4] >= 0 && D.lanes[m[4]] ? " (" + laneName(m[4]) + ")" : "") +
        "\n" + laneName(m[1]) + ", event " + m[0];
      hover(e, function () { return txt; });
      if (m[4] >= 0 && type <= 1) e.setAttribute("data-storage", m[4]);
    });
    // hazards
    var gh = el("g", { "class": "hazards" }, svg);
    // the engine's kind order reversed: errors drawn last (on top), unsynced-free over
    // the reuse-race that shares its segment (D.kinds is in the engine's order)
    var order = Object.keys(D.kinds).reverse();
    var sorted = D.hazards.slice().sort(function (a, b) {
      return order.indexOf(a.kind) - order.indexOf(b.kind) || a.id - b.id;
    });
    var crowded = D.hazards.length > 40, budget = MAX_PATHS, badgeX = [];
    sorted.forEach(function (h) {
      if (h.opened < 0) return;
      var color = kindColor(h.kind);
      var g = el("g", { "class": "hazard-link " + h.severity, "data-hazard": h.id, "data-kind": h.kind }, gh);
      if (!crowded) {
        el("line", { x1: X(h.opened), x2: X(h.opened), y1: 21, y2: totalH, stroke: color,
          "stroke-width": 1, "stroke-dasharray": "3 3", opacity: 0.55 }, g);
      }
      var lastX = -1e9, share = Math.max(4, Math.floor(MAX_PATHS / Math.max(D.hazards.length, 1)));
      var every = Math.max(1, Math.ceil(h.paths.length / share));
      h.paths.forEach(function (path, n) {
        if (!path.length) return;
        var endX = X(path[path.length - 1][2]);
        if (n > 0 && (n % every !== 0 || endX - lastX < 6 || budget <= 0)) return;
        lastX = endX;
        budget--;
        var pts = path.map(anchorPoint);
        if (pts.length > 1) {
          var d = "M" + pts[0][0] + "," + pts[0][1];
          for (var i = 1; i < pts.length; i++) {
            var p = pts[i - 1], q = pts[i], dx = Math.max(14, Math.abs(q[0] - p[0]) * 0.45);
            d += " C" + (p[0] + dx) + "," + p[1] + " " + (q[0] - dx) + "," + q[1] + " " + q[0] + "," + q[1];
          }
          el("path", { d: d, "class": "halo", stroke: "#fff", "stroke-width": 6, opacity: 0.85, fill: "none" }, g);
          el("path", { d: d, "class": "wire", stroke: color }, g);
        }
        pts.forEach(function (p, i) {
          var last = i === pts.length - 1;
          el("circle", { cx: p[0], cy: p[1], r: last ? 5.5 : 4.5, fill: last ? color : "#fff",
            stroke: color, "stroke-width": 2.2, "class": "anchor" + (last ? " opened" : "") }, g);
        });
      });
      h.occ.forEach(function (c) {
        if (c === h.opened) return;
        el("path", { d: "M" + X(c) + "," + (AXIS_H + 1) + " l5,8 l-10,0 z", fill: color, opacity: 0.8 }, g);
      });
      // badge at the top of the marker line, unless it would cover another one
      var bx = X(h.opened);
      var clash = badgeX.some(function (x) { return Math.abs(x - bx) < 19; });
      if (!clash) {
        badgeX.push(bx);
        el("circle", { cx: bx, cy: 12, r: 9, fill: color, stroke: "#fff", "stroke-width": 1.5,
          "class": "badge" }, g);
        var bt = el("text", { x: bx, y: 16, "text-anchor": "middle", "font-size": 11,
          "font-weight": "bold", fill: "#fff" }, g);
        bt.textContent = String(h.id);
      }
      title(g, hazardText(h));
      hover(g, function () { return hazardText(h); });
      g.addEventListener("mouseenter", function () { highlightHazard(h.id, true); });
      g.addEventListener("mouseleave", function () { highlightHazard(h.id, false); });
      g.addEventListener("click", function () {
        var card = document.getElementById("hz" + h.id);
        if (card) card.scrollIntoView({ behavior: "smooth", block: "center" });
      });
    });
  }

  function niceStep(min) {
    var steps = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
    for (var i = 0; i < steps.length; i++) if (steps[i] >= min) return steps[i];
    return 200000;
  }
  function fmtTime(us) {
    if (us === undefined || us === null) return "";
    if (us >= 1e6) return (us / 1e6).toFixed(2) + "s";
    if (us >= 1e3) return (us / 1e3).toFixed(1) + "ms";
    return us.toFixed(0) + "\u00b5s";
  }
  function highlightStorage(i, on) {
    var nodes = scroll.querySelectorAll('[data-storage="' + i + '"]');
    for (var k = 0; k < nodes.length; k++) nodes[k].classList.toggle("hl", on);
  }
  function highlightHazard(id, on) {
    var svg = document.getElementById("timeline-svg");
    if (svg) svg.classList.toggle("dim", on);
    var nodes = document.querySelectorAll('[data-hazard="' + id + '"]');
    for (var k = 0; k < nodes.length; k++) nodes[k].classList.toggle("hl", on);
  }

  // legend
  (function legend() {
    var box = document.getElementById("legend");
    function item(draw, text) {
      var span = document.createElement("span"); span.className = "item";
      var s = el("svg", { width: 22, height: 14 }, span); draw(s);
      var t = document.createElement("span"); t.textContent = text; span.appendChild(t);
      box.appendChild(span);
    }
    item(function (s) { el("rect", { x: 1, y: 3, width: 20, height: 8, rx: 2, fill: "#dfe7f0", stroke: "#9fb0c3" }, s); }, "storage life");
    item(function (s) { el("rect", { x: 6, y: 0, width: 3, height: 14, fill: C.read }, s); el("rect", { x: 13, y: 0, width: 3, height: 14, fill: C.write }, s); }, "read / write");
    item(function (s) { el("circle", { cx: 11, cy: 7, r: 3, fill: "#5c6b7a" }, s); }, "use from another stream");
    item(function (s) { el("path", { d: "M11,0 l6,7 l-6,7 l-6,-7 z", fill: "#fff", stroke: C.rec, "stroke-width": 1.8 }, s); }, "record_stream");
    item(function (s) { el("path", { d: "M6,1 L16,1 L11,13 z", fill: C.copy }, s); }, "copy");
    item(function (s) { el("line", { x1: 1, y1: 7, x2: 19, y2: 7, stroke: C.wait, "stroke-width": 1.5, }, s); }, "wait");
    item(function (s) { el("line", { x1: 1, y1: 7, x2: 19, y2: 7, stroke: C.sync, "stroke-width": 1.5 }, s); }, "sync");
    var kinds = {};
    D.hazards.forEach(function (h) { kinds[h.kind] = 1; });
    Object.keys(kinds).forEach(function (k) {
      item(function (s) {
        el("path", { d: "M2,11 C8,11 12,3 18,3", fill: "none", stroke: kindColor(k), "stroke-width": 2.6 }, s);
        el("circle", { cx: 18, cy: 3, r: 3, fill: kindColor(k) }, s);
      }, k);
    });
  })();

  // hazard cards <-> timeline
  var cards = document.querySelectorAll(".hz[data-hazard]");
  for (var i = 0; i < cards.length; i++) {
    (function (card) {
      var id = card.getAttribute("data-hazard");
      card.addEventListener("mouseenter", function () { highlightHazard(id, true); });
      card.addEventListener("mouseleave", function () { highlightHazard(id, false); });
    })(cards[i]);
  }

  function fit() {
    var avail = Math.max(scroll.clientWidth - 2 * PAD_X, 200);
    fitPx = Math.max(0.25, Math.min(28, avail / Math.max(D.cols, 1)));
    px = fitPx; draw();
  }
  document.getElementById("zoom-in").addEventListener("click", function () { px = Math.min(px * 1.6, 80); draw(); });
  document.getElementById("zoom-out").addEventListener("click", function () { px = Math.max(px / 1.6, 0.1); draw(); });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("show-sync").addEventListener("change", function (ev) {
    var layers = document.querySelectorAll(".sync-layer");
    for (var k = 0; k < layers.length; k++) layers[k].classList.toggle("hidden", !ev.target.checked);
  });
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { if (px === fitPx) fit(); }, 150);
  });
  fit();
  document.body.setAttribute("data-rendered", "1");
})();
