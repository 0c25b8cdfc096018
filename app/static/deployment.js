// Live progress of one deployment: the server sends the whole state as JSON on
// every change (Server-Sent Events); the table is redrawn from it, as the page drew it.
(function () {
  "use strict";
  const table = document.getElementById("deployment-nodes");
  if (!table || !window.EventSource) { return; }
  const admin = table.dataset.admin === "yes";
  const status = document.getElementById("deployment-status");
  const error = document.getElementById("deployment-error");
  const summary = document.getElementById("deployment-summary");
  const colors = {pending: "secondary", running: "primary", succeeded: "success",
                  failed: "danger", rolled_back: "warning", skipped: "secondary"};
  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) { made.className = className; }
    if (text !== undefined) { made.textContent = text; }
    return made;
  }
  function badge(value) {
    return element("span", "badge text-bg-" + (colors[value] || "secondary"), value);
  }
  function cell(row, content) {
    const td = row.insertCell();
    if (content instanceof Node) { td.appendChild(content); } else { td.textContent = content; }
    return td;
  }
  function outcome(node) {
    const box = element("div");
    if (!node.message) { return box; }
    box.appendChild(element("div", "text-danger", node.message));
    if (admin && node.error) {
      const details = element("details");
      details.appendChild(element("summary", "", "Details"));
      details.appendChild(element("pre", "mb-0", node.error));
      box.appendChild(details);
    }
    return box;
  }
  const source = new EventSource(table.dataset.events);
  source.onmessage = function (event) {
    const state = JSON.parse(event.data);
    status.replaceChildren(badge(state.status));
    error.replaceChildren();
    if (state.message) { error.appendChild(element("div", "alert alert-danger", state.message)); }
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const node of state.nodes) {
      const row = body.insertRow();
      cell(row, node.node);
      cell(row, badge(node.status));
      cell(row, node.step || "");
      cell(row, node.steps.map(function (s) { return s.step + " " + s.seconds.toFixed(2) + "s"; }).join(", ")).className = "small";
      cell(row, outcome(node)).className = "small";
    }
    const total = state.nodes.length;
    summary.textContent = "deployed on " + state.deployed + " of " + total + " node" + (total === 1 ? "" : "s");
    if (state.finished) { source.close(); }
  };
})();
