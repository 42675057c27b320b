// Draws every figure a page (or a live fragment) carries as JSON, with plotly.js.
(function () {
  "use strict";
  function drawPlots(root) {
    root.querySelectorAll('script[type="application/json"][data-plot]').forEach(function (s) {
      var el = document.getElementById(s.dataset.plot);
      if (!el) { return; }
      var fig = JSON.parse(s.textContent);
      Plotly.react(el, fig.data, fig.layout, { displayModeBar: false, responsive: true });
      el.dataset.drawn = "1";
    });
  }
  // Plots about to be replaced by a live update are released first (no leak per update).
  document.addEventListener("htmx:sseBeforeMessage", function () {
    var live = document.getElementById("live");
    if (live) { live.querySelectorAll(".js-plotly-plot").forEach(function (el) { Plotly.purge(el); }); }
  });
  document.addEventListener("DOMContentLoaded", function () { drawPlots(document); });
  document.addEventListener("htmx:afterSettle", function (e) { drawPlots(e.detail.elt || document); });
  document.addEventListener("htmx:sseMessage", function () {
    var live = document.getElementById("live");
    if (live) { live.dataset.updates = String(Number(live.dataset.updates || "0") + 1); drawPlots(live); }
  });
})();
