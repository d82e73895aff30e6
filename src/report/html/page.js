// The run table: sorting, filtering (by words, setting, language, status, or the runs behind
// a number of the tables), and opening a run's detail. Filters can come from the address:
// index.html?lang=hi&status=done&setting=…&q=words&runs=3+7 (also what the browser test uses).
"use strict";
(function () {
  var table = document.getElementById("run-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var text = document.getElementById("f-text");
  var setting = document.getElementById("f-setting");
  var lang = document.getElementById("f-lang");
  var status = document.getElementById("f-status");
  var chip = document.getElementById("f-runs");
  var chipLabel = document.getElementById("f-runs-label");
  var count = document.getElementById("f-count");
  var only = null;

  // Whether `w` starts a word of `text`: `af` finds the language, not the run id 08af4b40.
  function startsAWord(text, w) {
    for (var i = text.indexOf(w); i >= 0; i = text.indexOf(w, i + 1)) {
      if (i === 0 || !/[\p{L}\p{N}]/u.test(text[i - 1])) { return true; }
    }
    return false;
  }

  // A row's cells' text, lower-cased, one space between cells (so that a cell's first word
  // starts a word), computed once.
  var texts = new Map();
  function textOf(r) {
    if (!texts.has(r)) {
      texts.set(r, Array.prototype.map.call(r.cells, function (c) {
        return c.textContent;
      }).join(" ").toLowerCase());
    }
    return texts.get(r);
  }

  function apply() {
    var words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (r) {
      var d = r.dataset;
      var rowText = textOf(r);
      var ok = (!only || only.has(d.key)) &&
        (!setting.value || d.setting === setting.value) &&
        (!lang.value || d.lang === lang.value) &&
        (!status.value || d.status === status.value) &&
        words.every(function (w) { return startsAWord(rowText, w); });
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " runs";
    table.dataset.shown = String(shown);
    chip.hidden = !only;
  }

  function showRuns(keys, label) {
    only = new Set(keys.split(/\s+/).filter(Boolean));
    text.value = ""; setting.value = ""; lang.value = ""; status.value = "";
    var found = rows.filter(function (r) { return only.has(r.dataset.key); }).length;
    chipLabel.textContent = found + " run(s) behind " + label;
    apply();
  }

  // An address filter whose value no run has shows no runs and says why (a select cannot hold
  // the value, and leaving it blank would show every run as if the filter had worked).
  function showNothing(why) {
    only = new Set();
    chipLabel.textContent = why;
    apply();
  }

  document.addEventListener("click", function (e) {
    var link = e.target.closest("a[data-runs]");
    if (link) { showRuns(link.dataset.runs, link.dataset.label || "a number"); }
  });
  document.getElementById("f-runs-clear").addEventListener("click", function () { only = null; apply(); });
  [text, setting, lang, status].forEach(function (el) {
    el.addEventListener("input", function () { only = null; apply(); });
  });

  body.addEventListener("click", function (e) {
    if (e.target.closest("a")) { return; }
    var row = e.target.closest("tr");
    var link = row && row.querySelector("a[href^='#']");
    if (link) { link.click(); }
  });

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    // Sortable from the keyboard too, and the order is announced (aria-sort).
    th.tabIndex = 0;
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); th.click(); }
    });
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "asc" ? "desc" : "asc";
      Array.prototype.forEach.call(th.parentNode.cells, function (c) {
        delete c.dataset.dir;
        c.removeAttribute("aria-sort");
      });
      th.dataset.dir = dir;
      th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
      var numeric = th.dataset.type === "num";
      var sign = dir === "asc" ? 1 : -1;
      var value = function (r) {
        var c = r.cells[col];
        return numeric ? c.dataset.v : c.textContent.trim();
      };
      rows.sort(function (a, b) {
        var x = value(a), y = value(b);
        // Missing numbers sort last in either direction.
        if (numeric) {
          if (x === "" || y === "") { return (x === "") - (y === ""); }
          return sign * (Number(x) - Number(y));
        }
        return sign * x.localeCompare(y, undefined, { numeric: true });
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });

  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === "DETAILS") {
      el.open = true;
      el.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", openTarget);
  // A link to the detail already in the address changes no hash: open it all the same.
  document.addEventListener("click", function (e) {
    var link = e.target.closest("a[href^='#']");
    if (link && link.getAttribute("href") === location.hash) { setTimeout(openTarget, 0); }
  });

  var query = new URLSearchParams(location.search);
  text.value = query.get("q") || "";
  var unknown = [];
  [["setting", setting], ["lang", lang], ["status", status]].forEach(function (f) {
    var wanted = query.get(f[0]) || "";
    f[1].value = wanted;
    if (f[1].value !== wanted) { unknown.push(f[0] + " \u201c" + wanted + "\u201d"); }
  });
  if (unknown.length) {
    showNothing("no run has " + unknown.join(" or ") + " (from the address)");
  } else if (query.get("runs")) {
    showRuns(query.get("runs"), "the address");
  } else {
    apply();
  }
  openTarget();
  document.documentElement.dataset.ready = "yes";
})();
