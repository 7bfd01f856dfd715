// costpipe dashboard page: fetches each tab's figures (already formatted by the server),
// embeds the Vega-Lite specs of analytics/charts.py with the Vega served by the dashboard,
// keeps the filter in the URL, and applies live windows and alerts from /events (SSE).
"use strict";
(function () {
  var FILTERS = ["from", "to", "team", "app", "operation", "provider"];
  var TABS = ["overview", "costs", "gpus", "sql", "health"];
  var state = { tab: "overview", windows: [], target: null, loaded: {} };
  var $ = function (sel) { return document.querySelector(sel); };

  function params() { return new URLSearchParams(window.location.search); }

  function filterQuery() {
    var p = params(), out = new URLSearchParams();
    FILTERS.forEach(function (k) { if (p.get(k)) out.set(k, p.get(k)); });
    return out.toString();
  }

  function esc(v) {
    return String(v === null || v === undefined ? "–" : v).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"; }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
        return body;
      });
    });
  }

  var embedded = {};
  // Vega (0.9 MB, served by the dashboard) loads beside the first data request, not before
  // it: the headline numbers need no chart library
  var vegaReady = new Promise(function (resolve, reject) {
    var script = document.createElement("script");
    script.src = "/static/vega.js";
    script.onload = resolve;
    script.onerror = function () { reject(new Error("could not load /static/vega.js")); };
    document.head.appendChild(script);
  });

  function chart(id, spec) {
    return vegaReady.then(function () { return embed(id, spec); });
  }

  function embed(id, spec) {
    var el = document.getElementById("chart-" + id);
    if (!el || !window.vegaEmbed) { return Promise.resolve(); }
    if (embedded[id]) { embedded[id].finalize(); delete embedded[id]; }  // none left behind
    if (!spec) {
      el.innerHTML = "<p class='muted'>No data in the lake yet.</p>";
      el.removeAttribute("data-drawn");
      return Promise.resolve();
    }
    return window.vegaEmbed(el, spec, { actions: false, renderer: "svg" }).then(function (r) {
      embedded[id] = r;
      el.setAttribute("data-drawn", "1");
    });
  }

  function table(el, rows, columns) {
    if (!rows.length) { el.innerHTML = "<tr><td class='muted'>No data.</td></tr>"; return; }
    var cols = columns || Object.keys(rows[0]);
    el.innerHTML = "<thead><tr>" + cols.map(function (c) { return "<th>" + esc(c) + "</th>"; })
      .join("") + "</tr></thead><tbody>" + rows.map(function (r) {
        return "<tr>" + cols.map(function (c) {
          var v = Array.isArray(r) ? r[cols.indexOf(c)] : r[c];
          if (typeof v === "number") {
            var shown = Number.isInteger(v) ? v : Number(v.toPrecision(6));
            return "<td class='num' title='" + esc(v) + "'>" + esc(shown) + "</td>";
          }
          return "<td>" + esc(v) + "</td>";
        }).join("") + "</tr>";
      }).join("") + "</tbody>";
  }

  // ---- overview
  function drawKpis(kpis) {
    $("#kpis").innerHTML = kpis.map(function (k) {
      var bar = "";
      if (k.id === "progress") {
        var w = Math.max(0, Math.min(100, parseFloat(k.text) || 0));
        bar = "<div class='progress'><i style='width:" + w + "%'></i></div>";
      }
      return "<div class='tile' id='kpi-" + k.id + "'>" + esc(k.label) +
        "<b class='value'>" + esc(k.text) + "</b>" + bar + "</div>";
    }).join("");
  }

  function windowLabel(w) { return esc(String(w.window_start).replace("T", " ").slice(0, 19)); }

  function drawWindows(freshStart) {
    var rows = state.windows.slice(-20).reverse();
    $("#windows-table tbody").innerHTML = rows.map(function (w) {
      return "<tr data-window-start='" + esc(w.window_start) + "'" +
        (w.window_start === freshStart ? " class='fresh'" : "") + "><td>" + windowLabel(w) +
        "</td><td class='num'>" + esc(w.requests) + "</td><td class='num'>" +
        pct(w.internal_share_requests) + "</td><td class='num'>" + pct(w.internal_share_tokens) +
        "</td><td class='num'>" + pct(w.internal_share_cost) + "</td><td class='num'>$" +
        Number(w.cost).toFixed(4) + "</td></tr>";
    }).join("") || "<tr><td colspan='6' class='muted'>No closed window yet.</td></tr>";
  }

  function drawWindowChart() {
    return fetch("/api/window-chart", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rows: state.windows })
    }).then(function (r) { return r.json(); }).then(function (spec) {
      return chart("window-share", spec);
    });
  }

  function alertItem(a) {
    return "<li class='" + esc(a.severity) + "'><b>" + esc(a.rule) + "</b> " + esc(a.key) +
      " <span class='muted'>" + esc(String(a.timestamp).replace("T", " ").slice(0, 19)) +
      "</span><br>" + esc(a.message) + "</li>";
  }

  function loadOverview() {
    return getJSON("/api/overview?" + filterQuery()).then(function (d) {
      drawKpis(d.kpis);
      if (!document.body.hasAttribute("data-first-paint-ms")) {  // read by bench_dashboard
        document.body.setAttribute("data-first-paint-ms", String(Math.round(performance.now())));
      }
      state.target = d.target;
      state.windows = d.windows;
      $("#period").textContent = d.period[0] ? "Lake: " + d.period[0] + " to " + d.period[1] +
        " (UTC days)" : "No data in the lake yet.";
      drawWindows();
      $("#alerts-feed").innerHTML = d.alerts.map(alertItem).join("") ||
        "<li class='muted empty'>No alerts.</li>";
      document.body.setAttribute("data-ready", "overview");
      return Promise.all([chart("daily-share", d.charts["daily-share"]), drawWindowChart()]);
    });
  }

  // ---- cost per operation, GPUs
  function drawCharts(charts) {
    return Promise.all(Object.keys(charts).map(function (id) { return chart(id, charts[id]); }));
  }

  function loadCosts() {
    return getJSON("/api/costs?" + filterQuery()).then(function (d) {
      table($("#costs-table"), d.rows);
      table($("#breakeven-table"), d.breakeven);
      document.body.setAttribute("data-ready", "costs");
      return drawCharts(d.charts);
    });
  }

  function loadGpus() {
    return getJSON("/api/gpus?" + filterQuery()).then(function (d) {
      table($("#gpus-table"), d.rows);
      document.body.setAttribute("data-ready", "gpus");
      return drawCharts(d.charts);
    });
  }

  function loadHealth() {
    return getJSON("/api/health").then(function (h) {
      $("#health-lag").textContent = h.lag === null ? "–" : h.lag.toLocaleString() + " msgs";
      $("#health-dead").textContent = h.dead_letters === null ? "–" :
        h.dead_letters.toLocaleString();
      $("#health-spool").textContent = (h.spool_bytes / 1024).toFixed(1) + " KiB";
      $("#health-last-live").textContent = h.last_window_live || (h.live ? "none yet" : "off");
      $("#health-last-lake").textContent = h.last_window_in_lake || "none";
      $("#health-error").textContent = h.kafka_error || h.feed_error || "";
      document.body.setAttribute("data-ready", "health");
    });
  }

  // ---- SQL console
  function runSql(ev) {
    if (ev) { ev.preventDefault(); }
    $("#sql-error").textContent = "";
    $("#sql-status").textContent = "running…";
    document.body.removeAttribute("data-sql");
    return fetch("/api/sql", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: $("#sql-input").value })
    }).then(function (r) { return r.json(); }).then(function (res) {
      if (res.error) {
        $("#sql-error").textContent = res.error;
        $("#sql-status").textContent = "";
        $("#sql-result").innerHTML = "";
        document.body.setAttribute("data-sql", "error");
        return;
      }
      var el = document.createElement("table");
      table(el, res.rows, res.columns);
      $("#sql-result").innerHTML = "";
      $("#sql-result").appendChild(el);
      $("#sql-status").textContent = res.rows.length + " rows" +
        (res.truncated ? " (capped at " + res.cap + ")" : "") + " in " + res.seconds + " s";
      document.body.setAttribute("data-sql", "ok");
    }).catch(function (e) {
      $("#sql-error").textContent = String(e);
      document.body.setAttribute("data-sql", "error");
    });
  }

  function downloadCsv() {
    var form = document.createElement("form");
    form.method = "POST"; form.action = "/api/sql.csv";
    var input = document.createElement("input");
    input.type = "hidden"; input.name = "sql"; input.value = $("#sql-input").value;
    form.appendChild(input); document.body.appendChild(form); form.submit(); form.remove();
  }

  // ---- navigation and filters
  var LOADERS = { overview: loadOverview, costs: loadCosts, gpus: loadGpus, health: loadHealth,
    sql: function () { document.body.setAttribute("data-ready", "sql"); return Promise.resolve(); } };

  function show(tab) {
    state.tab = TABS.indexOf(tab) >= 0 ? tab : "overview";
    TABS.forEach(function (t) { $("#tab-" + t).hidden = t !== state.tab; });
    document.querySelectorAll("#tabs a").forEach(function (a) {
      a.classList.toggle("active", a.getAttribute("data-tab") === state.tab);
      var p = params(); p.set("tab", a.getAttribute("data-tab"));
      a.setAttribute("href", "?" + p.toString());
    });
    document.body.removeAttribute("data-ready");
    $("#filter-error").textContent = "";
    return LOADERS[state.tab]().catch(function (e) { $("#filter-error").textContent = String(e); });
  }

  function syncFormFromUrl() {
    var p = params();
    FILTERS.forEach(function (k) {
      var el = $("#filters [name=" + k + "]"), v = p.get(k) || "";
      if (el.tagName === "SELECT" && v && !Array.from(el.options).some(function (o) {
        return o.value === v; })) {
        el.appendChild(new Option(v, v));
      }
      el.value = v;
    });
  }

  function onFilterChange() {
    var p = params();
    FILTERS.forEach(function (k) {
      var v = $("#filters [name=" + k + "]").value;
      if (v) { p.set(k, v); } else { p.delete(k); }
    });
    p.set("tab", state.tab);
    history.replaceState(null, "", "?" + p.toString());
    show(state.tab);
  }

  function loadOptions() {
    return getJSON("/api/options").then(function (o) {
      ["team", "app", "operation", "provider"].forEach(function (k) {
        var el = $("#filters [name=" + k + "]");
        o[k].forEach(function (v) { el.appendChild(new Option(v, v)); });
      });
      syncFormFromUrl();
    });
  }

  // ---- live
  function live() {
    var source = new EventSource("/events");
    source.addEventListener("hello", function (e) {
      var on = JSON.parse(e.data).live;
      $("#live-state").textContent = on ? "live: connected" : "live: off (lake only)";
      $("#live-state").classList.toggle("on", on);
      if (!on) { source.close(); }
    });
    source.addEventListener("window", function (e) {
      var w = JSON.parse(e.data), i;
      for (i = 0; i < state.windows.length; i++) {
        if (state.windows[i].window_start === w.window_start) { break; }
      }
      state.windows[i] = w;
      state.windows.sort(function (a, b) { return a.window_start < b.window_start ? -1 : 1; });
      document.body.setAttribute("data-last-window", w.window_start);
      drawWindows(w.window_start);
      // the headline numbers follow the lake as the sink writes the window (a few s behind)
      if (state.tab === "overview" && !state.kpiTimer) {
        state.kpiTimer = setTimeout(function () {
          state.kpiTimer = null;
          getJSON("/api/overview?" + filterQuery()).then(function (d) { drawKpis(d.kpis); })
            .catch(function () { /* the next window tries again */ });
        }, 5000);
      }
      // a closing window arrives as several messages: redraw the chart once per second
      if (state.tab === "overview" && !state.chartTimer) {
        state.chartTimer = setTimeout(function () {
          state.chartTimer = null; drawWindowChart();
        }, 1000);
      }
    });
    source.addEventListener("alert", function (e) {
      var feed = $("#alerts-feed"), empty = feed.querySelector(".empty");
      if (empty) { empty.remove(); }
      feed.insertAdjacentHTML("afterbegin", alertItem(JSON.parse(e.data)));
    });
    source.onerror = function () { $("#live-state").textContent = "live: reconnecting…"; };
  }

  document.addEventListener("DOMContentLoaded", function () {
    syncFormFromUrl();
    $("#filters").addEventListener("change", onFilterChange);
    $("#clear-filters").addEventListener("click", function () {
      FILTERS.forEach(function (k) { $("#filters [name=" + k + "]").value = ""; });
      onFilterChange();
    });
    document.querySelectorAll("#tabs a").forEach(function (a) {
      a.addEventListener("click", function (ev) {
        ev.preventDefault();
        var p = params(); p.set("tab", a.getAttribute("data-tab"));
        history.pushState(null, "", "?" + p.toString());
        show(a.getAttribute("data-tab"));
      });
    });
    window.addEventListener("popstate", function () { syncFormFromUrl(); show(params().get("tab")); });
    $("#sql-form").addEventListener("submit", runSql);
    $("#sql-csv").addEventListener("click", downloadCsv);
    show(params().get("tab") || "overview");
    loadOptions();
    live();
  });
})();
