// Behaviour shared by every page: confirmations, copy buttons, relative times,
// focus on a form's error summary. No inline handlers, so a strict CSP holds.
(function () {
  "use strict";

  // Forms and buttons with data-confirm ask before they act.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const submitter = event.submitter;
    const message = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  // Copy buttons: the Clipboard API exists only in secure contexts (HTTPS or
  // localhost); on plain HTTP elsewhere a selected textarea and execCommand work.
  function fallbackCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    area.remove();
    return done;
  }
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { return true; },
        function () { return fallbackCopy(text); });
    }
    return Promise.resolve(fallbackCopy(text));
  }
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-copy-target]");
    if (!button) { return; }
    const source = document.getElementById(button.dataset.copyTarget);
    if (!source) { return; }
    const text = source.value !== undefined ? source.value : source.textContent;
    const status = document.getElementById(button.dataset.copyTarget + "-copied");
    copy(text.trim()).then(function (ok) {
      if (status) { status.textContent = ok ? "Copied." : "Copy failed: select the text and copy it."; }
      button.textContent = ok ? "Copied" : "Copy";
      window.setTimeout(function () { button.textContent = "Copy"; }, 2000);
    });
  });

  // Times: relative in the text, absolute UTC on hover (title is set server-side).
  const units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600],
                 ["minute", 60], ["second", 1]];
  const format = window.Intl && Intl.RelativeTimeFormat
    ? new Intl.RelativeTimeFormat("en", {numeric: "auto"}) : null;
  function relative(iso) {
    const seconds = (Date.parse(iso) - Date.now()) / 1000;
    if (isNaN(seconds) || !format) { return null; }
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size || unit === "second") {
        return format.format(Math.round(seconds / size), unit);
      }
    }
    return null;
  }
  function refreshTimes(root) {
    for (const element of root.querySelectorAll("time[data-relative]")) {
      const text = relative(element.getAttribute("datetime"));
      if (text) { element.textContent = text; }
    }
  }
  window.rpccRefreshTimes = refreshTimes;

  // Parts of a page that change by themselves carry data-live="seconds" and an id:
  // they are fetched again from the page's own address and swapped in place, until
  // the fresh copy no longer carries data-live (it has settled).
  function keepLive(element) {
    const seconds = parseFloat(element.dataset.live);
    if (!element.id || !(seconds > 0)) { return; }
    window.setTimeout(function () {
      fetch(window.location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          const current = document.getElementById(element.id);
          if (!current) { return; }
          if (html === null) { keepLive(current); return; }
          const fresh = new DOMParser().parseFromString(html, "text/html")
            .getElementById(element.id);
          if (!fresh) { return; }
          current.replaceWith(fresh);
          refreshTimes(fresh);
          keepLive(fresh);
        })
        .catch(function () { keepLive(element); });
    }, seconds * 1000);
  }

  // The capability table shows the engines of the pool chosen in the same form.
  function showPoolEngines(select) {
    const option = select.options[select.selectedIndex];
    const engines = option ? (option.dataset.engines || "").split(" ").filter(Boolean) : [];
    for (const cell of document.querySelectorAll("#engine-support [data-engine]")) {
      cell.hidden = engines.length > 0 && !engines.includes(cell.dataset.engine);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const pool = document.querySelector("select[name=pool]");
    if (pool && document.getElementById("engine-support")) {
      showPoolEngines(pool);
      pool.addEventListener("change", function () { showPoolEngines(pool); });
    }
    refreshTimes(document);
    for (const element of document.querySelectorAll("[data-live]")) { keepLive(element); }
    window.setInterval(function () { refreshTimes(document); }, 30000);
    const summary = document.getElementById("error-summary");
    if (summary) { summary.focus(); }
  });
})();
