(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("abh-cases").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var PAGE = 50, page = 1;
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text != null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function rate(k, n) { return n ? k / n : null; }
  function num(v, d) { return v == null ? "\u2013" : v.toFixed(d); }
  var FILTERS = {
    all: function () { return true; },
    differing: function (r) { return r.ar !== r.br || r.a_score !== r.b_score; },
    regressions: function (r) { return r.br < r.ar || (r.br === r.ar && r.b_score < r.a_score); },
    improvements: function (r) { return r.br > r.ar || (r.br === r.ar && r.b_score > r.a_score); },
    errors: function (r) { return (r.a_errors || 0) > 0 || (r.b_errors || 0) > 0; },
    flaky: function (r) { return !!(r.a_flaky || r.b_flaky); }
  };
  function haystack(arm, r) {
    var c = D.cases[r.case_id] || {calls: {}}, parts = [JSON.stringify(c.vars)];
    [D.baseline, arm].forEach(function (a) {
      (c.calls[a] || []).forEach(function (x) { parts.push(x.output || ""); });
    });
    return parts.join("\n").toLowerCase();
  }
  function rows() {
    var arm = $("abh-arm").value, f = FILTERS[$("abh-filter").value];
    var q = $("abh-q").value.trim().toLowerCase(), sort = $("abh-sort").value;
    var out = D.rows[arm].map(function (r) {
      var x = Object.assign({}, r);
      x.ar = rate(r.a_k, r.a_n); x.br = rate(r.b_k, r.b_n);
      return x;
    }).filter(function (r) { return f(r) && (!q || haystack(arm, r).indexOf(q) >= 0); });
    var key = sort.replace("-", ""), dir = sort[0] === "-" ? -1 : 1;
    out.sort(function (x, y) {
      var a = x[key === "case" ? "case_id" : key], b = y[key === "case" ? "case_id" : key];
      if (a == null) return 1; if (b == null) return -1;
      return (a < b ? -1 : a > b ? 1 : 0) * dir || (x.case_id < y.case_id ? -1 : 1);
    });
    return out;
  }
  function draw() {
    var all = rows(), pages = Math.max(1, Math.ceil(all.length / PAGE));
    page = Math.min(page, pages);
    var body = $("abh-rows");
    body.textContent = "";
    all.slice((page - 1) * PAGE, page * PAGE).forEach(function (r) {
      var tr = el("tr"), td = el("td", null, "l"), a = el("a", r.case_id);
      a.href = "#"; a.onclick = function (ev) { ev.preventDefault(); show(r.case_id); };
      td.appendChild(a); tr.appendChild(td);
      var vars = D.cases[r.case_id] ? D.cases[r.case_id].vars : {};
      tr.appendChild(el("td", Object.keys(vars).map(function (k) {
        return k + "=" + String(vars[k]).slice(0, 120);
      }).join("; "), "vars"));
      [r.a_n ? r.a_k + "/" + r.a_n : "\u2013", num(r.a_score, 3), r.b_n ? r.b_k + "/" + r.b_n : "\u2013",
       num(r.b_score, 3)].forEach(function (t) { tr.appendChild(el("td", t)); });
      tr.appendChild(el("td", r.diff == null ? "\u2013" : (r.diff > 0 ? "+" : "") + r.diff.toFixed(3),
        r.diff < 0 ? "worse" : r.diff > 0 ? "better" : ""));
      [num(r.a_latency_ms, 0), num(r.b_latency_ms, 0)].forEach(function (t) { tr.appendChild(el("td", t)); });
      body.appendChild(tr);
    });
    $("abh-count").textContent = all.length + " of " + D.rows[$("abh-arm").value].length +
      " cases \u00b7 page " + page + " of " + pages;
    $("abh-prev").disabled = page <= 1; $("abh-next").disabled = page >= pages;
  }
  function words(s) { return (s || "").match(/\s+|\S+/g) || []; }
  function diff(a, b) {
    var x = words(a), y = words(b), n = x.length, m = y.length, i, j;
    if (n * m > 250000) return [["del", a || ""], ["add", b || ""]];
    var L = []; for (i = 0; i <= n; i++) { L.push(new Array(m + 1).fill(0)); }
    for (i = n - 1; i >= 0; i--) for (j = m - 1; j >= 0; j--)
      L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    var out = []; i = 0; j = 0;
    function push(op, t) { if (out.length && out[out.length - 1][0] === op) out[out.length - 1][1] += t; else out.push([op, t]); }
    while (i < n && j < m) {
      if (x[i] === y[j]) { push("same", x[i]); i++; j++; }
      else if (L[i + 1][j] >= L[i][j + 1]) push("del", x[i++]); else push("add", y[j++]);
    }
    while (i < n) push("del", x[i++]); while (j < m) push("add", y[j++]);
    return out;
  }
  function callBox(arm, c, against) {
    var box = el("div", null, "call"), ok = c && c.made && c.passed;
    var h = el("h4", arm + " "); h.appendChild(el("span", c ? (ok ? "passed" : "failed") : "no call", ok ? "pass" : "fail"));
    box.appendChild(h);
    if (!c) return box;
    if (c.status !== "ok") box.appendChild(el("p", c.error_type || "error", "fail"));
    box.appendChild(el("pre", (c.output || "") + (c.cut ? " \u2026 (cut: abharness view shows it whole)" : ""), "output"));
    if (against !== undefined) {
      var pre = el("pre", null, "diff");
      diff(against, c.output).forEach(function (p) {
        pre.appendChild(p[0] === "same" ? document.createTextNode(p[1]) : el(p[0] === "del" ? "del" : "ins", p[1]));
      });
      box.appendChild(el("div", "words against " + D.baseline + ":", "ci")); box.appendChild(pre);
    }
    box.appendChild(el("div", "score " + num(c.score, 3) + " \u00b7 " + num(c.latency_ms, 0) + " ms \u00b7 " +
      (c.cost_usd == null ? "\u2013" : c.cost_usd.toFixed(6)) + " USD", "ci"));
    return box;
  }
  function show(id) {
    var arm = $("abh-arm").value, c = D.cases[id], panel = $("abh-case");
    panel.textContent = "";
    panel.appendChild(el("h3", "Case " + id));
    var dl = el("dl", null, "facts");
    Object.keys(c.vars).forEach(function (k) { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", String(c.vars[k]))); });
    panel.appendChild(dl);
    var base = c.calls[D.baseline] || [], mine = c.calls[arm] || [];
    for (var r = 0; r < Math.max(base.length, mine.length); r++) {
      panel.appendChild(el("h4", "repeat " + r));
      var side = el("div", null, "side");
      side.appendChild(callBox(D.baseline, base[r]));
      side.appendChild(callBox(arm, mine[r], base[r] ? base[r].output : ""));
      panel.appendChild(side);
    }
    panel.hidden = false; panel.scrollIntoView();
  }
  ["abh-arm", "abh-filter", "abh-sort"].forEach(function (id) { $(id).onchange = function () { page = 1; draw(); }; });
  $("abh-q").oninput = function () { page = 1; draw(); };
  $("abh-prev").onclick = function () { page--; draw(); };
  $("abh-next").onclick = function () { page++; draw(); };
  draw();
})();
