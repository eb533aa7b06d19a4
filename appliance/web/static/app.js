// Progressive enhancement only: every page works without this file.
// The status page replaces its live part with a fresh server-rendered (escaped) fragment
// once a second, so calls, LEDs and faults change in place without a reload.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) { return; }
  const url = live.dataset.refresh;
  const REFRESH_MS = 1000;
  async function refresh() {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        live.innerHTML = await response.text();
      }
    } catch (e) {
      // The box may be restarting; keep the last view and try again.
    }
    setTimeout(refresh, REFRESH_MS);
  }
  setTimeout(refresh, REFRESH_MS);
})();
