// Live progress of one deployment: the server sends the whole state as JSON on
// every change (Server-Sent Events); the table is redrawn from it.
(function () {
  "use strict";
  const table = document.getElementById("deployment-nodes");
  if (!table || !window.EventSource) { return; }
  const status = document.getElementById("deployment-status");
  const error = document.getElementById("deployment-error");
  const summary = document.getElementById("deployment-summary");
  const colors = {pending: "secondary", running: "primary", succeeded: "success",
                  failed: "danger", rolled_back: "warning", skipped: "secondary"};
  function badge(value) {
    const span = document.createElement("span");
    span.className = "badge text-bg-" + (colors[value] || "secondary");
    span.textContent = value;
    return span;
  }
  function cell(row, content) {
    const td = row.insertCell();
    if (content instanceof Node) { td.appendChild(content); } else { td.textContent = content; }
    return td;
  }
  const source = new EventSource(table.dataset.events);
  source.onmessage = function (event) {
    const state = JSON.parse(event.data);
    status.replaceChildren(badge(state.status));
    error.textContent = state.error || "";
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const node of state.nodes) {
      const row = body.insertRow();
      cell(row, node.node);
      cell(row, badge(node.status));
      cell(row, node.step || "");
      cell(row, node.steps.map(function (s) { return s.step + " " + s.seconds.toFixed(2) + "s"; }).join(", "));
      cell(row, node.error || "").className = "small text-danger";
    }
    const live = state.nodes.filter(function (n) { return n.status === "succeeded"; }).length;
    const total = state.nodes.length;
    summary.textContent = "deployed on " + live + " of " + total + " node" + (total === 1 ? "" : "s");
    if (state.finished) { source.close(); }
  };
})();
