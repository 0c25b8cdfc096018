// Colour theme: the person's saved choice, else the operating system's preference.
// Loaded in <head> before the page is drawn, so a dark page never flashes light.
(function () {
  "use strict";
  const KEY = "rpcc-theme";
  const media = window.matchMedia("(prefers-color-scheme: dark)");
  function saved() {
    try { return localStorage.getItem(KEY); } catch (e) { return null; }
  }
  function effective() {
    const choice = saved();
    if (choice === "light" || choice === "dark") { return choice; }
    return media.matches ? "dark" : "light";
  }
  function apply() {
    document.documentElement.setAttribute("data-bs-theme", effective());
  }
  apply();
  media.addEventListener("change", apply);
  document.addEventListener("DOMContentLoaded", function () {
    const toggle = document.getElementById("theme-toggle");
    if (!toggle) { return; }
    function label() {
      const dark = effective() === "dark";
      toggle.setAttribute("aria-pressed", dark ? "true" : "false");
      toggle.textContent = dark ? "Light mode" : "Dark mode";
    }
    label();
    toggle.addEventListener("click", function () {
      const next = effective() === "dark" ? "light" : "dark";
      try { localStorage.setItem(KEY, next); } catch (e) { /* private mode: this page only */ }
      apply();
      label();
    });
    media.addEventListener("change", label);
  });
})();
