// Swaps in the server-rendered live part of the page every second.
(function () {
  "use strict";
  var view = document.getElementById("view");
  var status = document.getElementById("status");
  function tick() {
    fetch("/dashboard/view", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        view.innerHTML = html;
        status.textContent = "live (updated " + new Date().toISOString() + ")";
      })
      .catch(function (e) { status.textContent = "update failed: " + e.message; })
      .finally(function () { setTimeout(tick, 1000); });
  }
  setTimeout(tick, 1000);
})();
