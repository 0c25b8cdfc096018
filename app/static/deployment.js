// Live progress of one deployment: the server sends the whole state as JSON on
// every change (Server-Sent Events); the table is redrawn from it, as the page drew it.
// When no stream is to be had (too many open: 429, or no EventSource), the page asks
// for the state every few seconds instead, until the deployment finishes.
(function () {
  "use strict";
  const table = document.getElementById("deployment-nodes");
  if (!table) { return; }
  const POLL_MS = 3000;
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
  function draw(state) {
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
  }
  function poll() {
    fetch(table.dataset.events, {credentials: "same-origin",
                                 headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (state) {
        if (state) { draw(state); }
        if (!state || !state.finished) { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS); });
  }
  if (!window.EventSource) { poll(); return; }
  const source = new EventSource(table.dataset.events);
  source.onmessage = function (event) {
    const state = JSON.parse(event.data);
    draw(state);
    if (state.finished) { source.close(); }
  };
  // A refused stream (429) closes for good; a stream that ended reconnects by itself.
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) { poll(); }
  };
})();
