/* continuum console: live views over server-sent events. Plain JS, no build.
   Data is written with textContent only (never as HTML). */
"use strict";
(function () {
  const $ = (s, el) => (el || document).querySelector(s);
  const meta = (n) => ($("meta[name=" + n + "]") || {}).content;
  const csrf = meta("csrf"), admin = meta("role") === "admin";
  const page = document.body.dataset.page;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (k === "cls") e.className = v;
      else if (k === "on") e.addEventListener("click", v); else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }
  const num = (v, d) => (v === null || v === undefined) ? "\u2014" : Number(v).toFixed(d === undefined ? 1 : d);
  const txt = (v) => (v === null || v === undefined) ? "\u2014" : String(v);
  const when = (ts) => ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "\u2014";
  const ago = (s) => s === null || s === undefined ? "never" : s < 60 ? s.toFixed(0) + " s ago" : s < 3600 ? (s / 60).toFixed(0) + " min ago" : (s / 3600).toFixed(1) + " h ago";
  const td = (v, cls) => el("td", { text: v, cls: cls || "" });
  const fill = (tbody, rows) => tbody.replaceChildren(...rows);
  const outbox = (r) => txt(r.outbox) + (r.oldest === null || r.oldest === undefined ? "" : " (" + ago(r.oldest) + ")");
  const mib = (b) => (b === null || b === undefined) ? "\u2014" : (b / 1048576).toFixed(0) + " MiB";

  /* one EventSource per view; reopened when the view's parameters change */
  function live(params, onData) {
    let es = null;
    const badge = $("#live");
    function open() {
      if (es) es.close();
      es = new EventSource("/api/stream?" + new URLSearchParams(params()));
      es.onopen = () => { badge.textContent = "live"; badge.className = "badge on"; };
      es.onerror = () => { badge.textContent = "reconnecting"; badge.className = "badge off"; };
      es.onmessage = (e) => onData(JSON.parse(e.data));
      es.addEventListener("logout", () => { es.close(); location.href = "/login"; });
    }
    open();
    return open;
  }

  async function act(path, body, msg) {
    msg.textContent = "\u2026";
    try {
      const r = await fetch(path, { method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf }, body: JSON.stringify(body) });
      const j = await r.json();
      msg.textContent = r.ok ? (j.action + " " + j.target + ": " + j.outcome) : ("refused: " + (j.error || j.message || r.status));
    } catch (e) { msg.textContent = "failed: " + e; }
  }

  function fleet() {
    const st = { q: "", sort: "id", desc: "0", offset: 0, limit: 50 };
    const body = $("#fleet tbody");
    const reopen = live(() => st, (d) => {
      $("#summary").textContent = d.total + " devices, " + d.online + " online, " + d.matched + " matching; gateway " + d.gateway;
      $("#range").textContent = d.matched ? (d.offset + 1) + "\u2013" + Math.min(d.offset + d.limit, d.matched) : "0";
      $("#prev").disabled = d.offset <= 0; $("#next").disabled = d.offset + d.limit >= d.matched;
      fill(body, d.rows.map((r) => {
        const f = r.forecast, a = r.alert;
        return el("tr", { "data-dev": r.id },
          el("td", {}, el("a", { href: "/device/" + encodeURIComponent(r.id), text: r.id })),
          el("td", {}, el("span", { cls: "badge " + r.state, text: r.state })),
          td(ago(r.age)), td(num(r.cpu), "cpu"), td(num(r.mem), "mem"), td(outbox(r)), td(txt(r.dropped)),
          td(f ? num(f.cpu) + " / " + num(f.mem) + " \u00b1 " + num(f.band) : "\u2014"),
          td(a ? a.metric + " " + num(a.actual) + " (" + r.alerts + ")" : "\u2014", a ? "alert" : ""));
      }));
    });
    let timer = null;
    $("#q").addEventListener("input", (e) => { clearTimeout(timer); timer = setTimeout(() => { st.q = e.target.value; st.offset = 0; reopen(); }, 250); });
    $("#prev").addEventListener("click", () => { st.offset = Math.max(0, st.offset - st.limit); reopen(); });
    $("#next").addEventListener("click", () => { st.offset += st.limit; reopen(); });
    for (const th of document.querySelectorAll("#fleet th[data-sort]")) {
      th.addEventListener("click", () => {
        st.desc = (st.sort === th.dataset.sort && st.desc === "0") ? "1" : "0";
        st.sort = th.dataset.sort; st.offset = 0;
        for (const o of document.querySelectorAll("#fleet th")) o.classList.remove("sorted", "desc");
        th.classList.add("sorted"); if (st.desc === "1") th.classList.add("desc");
        reopen();
      });
    }
    $("#fleet th[data-sort=id]").classList.add("sorted");
  }

  function device() {
    const dev = $("#dev").dataset.dev;
    let samples = [], chart = null;
    function draw(forecasts) {
      /* one x axis: sample times and forecast times merged */
      const rows = new Map();
      for (const [t, c, m] of samples) rows.set(t, [c, m, null, null, null]);
      for (const [t, c, , b] of forecasts) {
        const r = rows.get(t) || [null, null, null, null, null];
        r[2] = c; r[3] = (c === null || b === null) ? null : c - b; r[4] = (c === null || b === null) ? null : c + b;
        rows.set(t, r);
      }
      const xs = [...rows.keys()].sort((a, b) => a - b);
      const data = [xs, ...[0, 1, 2, 3, 4].map((i) => xs.map((x) => rows.get(x)[i]))];
      if (!chart) {
        const box = $("#chart");
        chart = new uPlot({
          width: box.clientWidth - 16, height: 320,
          scales: { y: { range: [0, 100] } },
          series: [{},
            { label: "cpu %", stroke: "#2457c5", width: 1.5, spanGaps: true },
            { label: "mem %", stroke: "#1d7a3e", width: 1.5, spanGaps: true },
            { label: "forecast cpu", stroke: "#a86400", dash: [6, 4], spanGaps: true, points: { show: true, size: 5 } },
            { label: "band low", stroke: "rgba(168,100,0,.35)", spanGaps: true },
            { label: "band high", stroke: "rgba(168,100,0,.35)", spanGaps: true }],
          bands: [{ series: [5, 4], fill: "rgba(168,100,0,.15)" }],
        }, data, box);
        window.consoleChart = chart;
      } else chart.setData(data);
    }
    live(() => ({ view: "device", id: dev }), (d) => {
      if (!d.device) return;
      samples = d.incremental ? samples.concat(d.samples).slice(-2000) : d.samples;
      const r = d.device;
      const s = $("#dstate"); s.textContent = r.state; s.className = "badge " + r.state;
      $("#dstats").textContent = "seq " + r.seq + ", last sample " + ago(r.age) + ", cpu " + num(r.cpu) + " %, mem " + num(r.mem) +
        " %, outbox " + outbox(r) + ", dropped " + txt(r.dropped) + (r.forecast ? ", forecast cpu " + num(r.forecast.cpu) + " \u00b1 " + num(r.forecast.band) : "");
      draw(d.forecasts);
      fill($("#alerts tbody"), d.alerts.slice().reverse().map((a) => el("tr", {},
        td(txt(a.seq)), td(when(a.ts)), td(txt(a.metric)), td(num(a.actual)), td(num(a.forecast)), td(num(a.band)))));
      fill($("#dobjects tbody"), d.objects.map((o) => el("tr", {},
        td(o.id), td(o.class), td(o.node), td((o.aliases || []).join(", ")), td(o.state))));
    });
    const b = $("#retrain");
    if (b) b.addEventListener("click", () => act("/api/actions/retrain", { device: dev }, $("#msg")));
  }

  function nodes() {
    live(() => ({ view: "nodes" }), (d) => {
      const g = $("#gw"); g.textContent = d.gateway; g.className = "badge " + d.gateway;
      fill($("#nodes tbody"), d.nodes.map((n) => {
        const state = el("td", {}, el("span", { cls: "badge " + n.state, text: n.state }));
        if (n.draining) state.append(" ", el("span", { cls: "badge draining", text: "draining" }));
        const tr = el("tr", { "data-node": n.id }, td(n.id), state, td(txt(n.host)), td(txt(n.pid)),
          td(when(n.started)), td(txt(n.objects)), td(txt(n.resident)), td(txt(n.evicted)), td(txt(n.quarantined)),
          td(mib(n.memory), "memory"), td(txt(n.queued), "queued"), td(txt(n.running), "running"), td(num(n.load, 2), "load"),
          td(n.classes.join(", ")));
        if (admin) {
          const undo = n.draining, what = undo ? "undrain" : "drain";
          tr.append(el("td", {}, el("button", { cls: "act", text: undo ? "Undrain" : "Drain", on: () => {
            if (undo || confirm("Drain node " + n.id + "? No new objects go there, and its objects move to other nodes."))
              act("/api/actions/" + what, { node: n.id }, $("#msg"));
          } })));
        }
        return tr;
      }));
    });
  }

  function objects() {
    const st = { view: "objects", q: "" };
    const reopen = live(() => st, (d) => {
      $("#summary").textContent = d.total + " objects" + (d.error ? " (gateway: " + d.error + ")" : "") + (d.at ? ", listed " + when(d.at) : "");
      fill($("#objects tbody"), d.objects.map((o) => {
        const tr = el("tr", { "data-obj": o.id }, td(o.id), td(o.class), td(o.node), td((o.replicas || []).join(", ")),
          td((o.aliases || []).join(", ")), td(txt(o.owner)), td(o.state),
          td(o.resident === true ? "yes" : o.resident === false ? "evicted" : "\u2014", "resident"),
          td(o.used ? ago(Math.max(0, d.now - o.used)) : "\u2014"), td(when(o.created)));
        if (admin) tr.append(el("td", {}, el("button", { cls: "act", text: "Delete", on: () => {
          if (confirm("Delete object " + o.id + "?")) act("/api/actions/delete", { ref: o.id }, $("#msg"));
        } })));
        return tr;
      }));
    });
    let timer = null;
    $("#q").addEventListener("input", (e) => { clearTimeout(timer); timer = setTimeout(() => { st.q = e.target.value; reopen(); }, 250); });
  }

  function audit() {
    live(() => ({ view: "audit" }), (d) => {
      fill($("#audit tbody"), d.entries.map((a) => el("tr", {},
        td(when(a.ts)), td(txt(a.user)), td(txt(a.action)), td(txt(a.target)), td(txt(a.outcome), a.outcome === "ok" || a.outcome === "started" ? "" : "alert"),
        td(txt(a.error || a.why || a.message || (a.epochs ? "epochs " + a.epochs : ""))))));
    });
  }

  ({ fleet, device, nodes, objects, audit }[page] || (() => {}))();
})();
