// vidq admin: live progress for the jobs on the page, and "select all". No framework, no build step.
(function () {
  "use strict";

  function rowsFor(id) {
    return document.querySelectorAll('[data-job="' + id + '"]');
  }

  function apply(update) {
    rowsFor(update.id).forEach(function (row) {
      var before = row.getAttribute("data-status");
      row.setAttribute("data-status", update.status);
      var status = row.querySelector('[data-field="status"]');
      if (status) {
        status.textContent = update.status;
        status.className = "status status-" + update.status;
      }
      var bar = row.querySelector('[data-field="progress"]');
      if (bar) {
        bar.value = update.progress;
        bar.textContent = update.progress + "%";
      }
      var text = row.querySelector('[data-field="progress-text"]');
      if (text) {
        var detail = update.stage ? " · " + update.stage : "";
        if (update.stage === "denoising") detail += " " + update.step + "/" + update.total_steps;
        text.textContent = update.progress + "%" + detail;
      }
      // A detail page shows the result (or error) once the job ends: load it.
      if (row.hasAttribute("data-detail") && before !== update.status &&
          (update.status === "completed" || update.status === "failed" || update.status === "cancelled")) {
        window.location.reload();
      }
    });
  }

  function watch() {
    var ids = [];
    document.querySelectorAll("[data-job][data-status]").forEach(function (el) {
      var s = el.getAttribute("data-status");
      if (s === "queued" || s === "in_progress") ids.push(el.getAttribute("data-job"));
    });
    if (!ids.length || !window.EventSource) return;
    var source = new EventSource("/admin/jobs/live?ids=" + encodeURIComponent(ids.join(",")));
    source.addEventListener("update", function (e) { apply(JSON.parse(e.data)); });
    source.addEventListener("done", function () { source.close(); });
  }

  function selectAll() {
    var all = document.getElementById("select-all");
    if (!all) return;
    all.addEventListener("change", function () {
      all.form.querySelectorAll('input[name="ids"]').forEach(function (box) { box.checked = all.checked; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    watch();
    selectAll();
  });
})();
