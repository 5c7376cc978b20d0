/* Tasker dashboard: the few live and interactive parts of server-rendered pages.
 *
 * - forms with data-confirm ask with window.confirm before they are sent;
 * - JSON fields (resolve results, a new task's context) are checked by the server, which answers 422
 *   with the error next to the field and the text kept, so there is one rule in one place;
 * - the task page follows its task over the API's SSE stream and re-reads GET /api/v1/tasks/{id}
 *   to recolour the DAG, the statuses, results and errors, and to show the actions that apply;
 * - the events page follows the stream with the filters of its URL.
 * No framework and no build step: CSP forbids inline script, so everything lives in this file.
 */
(function () {
  "use strict";

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  // -- forms: confirmation (the server checks JSON fields and answers 422 next to the field) -------
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) { return; }
    if (form.id === "bulk" && !$all("input[name=ids]:checked", form).length) {
      event.preventDefault();
      var note = $("#selected-count");
      if (note) { note.textContent = "Select at least one task first."; }
      return;
    }
    var question = form.getAttribute("data-confirm");
    if (question) {
      var submitter = event.submitter;
      if (form.id === "bulk" && submitter) {
        var n = $all("input[name=ids]:checked", form).length;
        question = submitter.textContent.trim().replace(" selected", "") + " " + n + " task(s)?";
      }
      if (!window.confirm(question)) { event.preventDefault(); }
    }
  });

  // -- tasks list: select all -------------------------------------------------------------------
  var all = $("#select-all");
  if (all) {
    var update = function () {
      var n = $all("input[name=ids]:checked").length;
      var note = $("#selected-count");
      if (note) { note.textContent = n ? n + " selected" : "Select tasks to act on them."; }
    };
    all.addEventListener("change", function () {
      $all("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
      update();
    });
    $all("input[name=ids]").forEach(function (box) { box.addEventListener("change", update); });
  }

  // -- event lists ----------------------------------------------------------------------------------
  var MAX_ITEMS = 500;

  function time(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? iso : d.toISOString().replace("T", " ").slice(0, 19);
  }

  function describe(e) {
    var data = e.data || {};
    var bits = [];
    if (e.step) { bits.push("step " + e.step); }
    if (e.attempt) { bits.push("attempt " + e.attempt); }
    var err = data.error && (data.error["class"] || data.error.error_class);
    if (err) { bits.push(err + ": " + (data.error.message || "")); }
    else if (data.error_class) { bits.push(data.error_class + ": " + (data.error_message || "")); }
    if (data.reason) { bits.push(String(data.reason)); }
    return bits.join(" · ");
  }

  function addEvent(list, e, withLinks) {
    var li = document.createElement("li");
    li.setAttribute("data-event", e.event);
    var when = document.createElement("time");
    when.dateTime = e.at;
    when.textContent = time(e.at);
    var name = document.createElement("code");
    name.textContent = e.event;
    li.appendChild(when);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(name);
    if (withLinks && e.task_id) {
      li.appendChild(document.createTextNode(" "));
      var a = document.createElement("a");
      a.href = "/tasks/" + e.task_id;
      a.textContent = "#" + e.task_id + (e.template ? " " + e.template : "");
      li.appendChild(a);
    }
    var text = describe(e);
    if (text) {
      var span = document.createElement("span");
      span.className = "muted";
      span.textContent = " " + text;
      li.appendChild(span);
    }
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_ITEMS) { list.removeChild(list.lastChild); }
  }

  function follow(url, names, onEvent, onState) {
    if (!window.EventSource || !url) { return null; }
    var source = new EventSource(url);
    var handler = function (message) {
      try { onEvent(JSON.parse(message.data)); } catch (err) { /* a malformed message: skip it */ }
    };
    names.split(/\s+/).filter(Boolean).forEach(function (name) { source.addEventListener(name, handler); });
    source.onmessage = handler;
    source.onopen = function () { onState("live"); };
    source.onerror = function () { onState(source.readyState === 2 ? "disconnected" : "reconnecting…"); };
    window.addEventListener("pagehide", function () { source.close(); });
    return source;
  }

  var log = $("#event-log");
  if (log && log.getAttribute("data-stream")) {
    var state = $("#event-state");
    follow(log.getAttribute("data-stream"), log.getAttribute("data-events") || "",
      function (e) { addEvent(log, e, true); },
      function (s) { if (state) { state.textContent = s === "live" ? "Following live." : s; } });
  }

  // -- task page: live DAG, statuses, results, actions ------------------------------------------
  var live = $("#task-live");
  if (live) {
    var api = live.getAttribute("data-api");
    var finished = (live.getAttribute("data-finished") || "").split(" ");
    var timer = null;
    var poller = null;

    var allows = function (el, attr, value) {
      var list = el.getAttribute(attr);
      return list === null || list.split(" ").indexOf(value) >= 0;
    };

    var apply = function (task) {
      var status = $("#task-status");
      if (status) { status.textContent = task.status; status.setAttribute("data-state", task.status); }
      $all("form[data-when-task]").forEach(function (form) {
        if (!form.hasAttribute("data-when-step")) { form.hidden = !allows(form, "data-when-task", task.status); }
      });
      (task.steps || []).forEach(function (step) {
        var node = $all("#dag g.node").filter(function (g) { return g.getAttribute("data-step") === step.name; })[0];
        if (node) {
          node.setAttribute("data-state", step.status);
          var title = $("title", node);
          if (title) { title.textContent = step.name + ": " + step.status; }
        }
        var section = $all("section.step").filter(function (s) { return s.getAttribute("data-step") === step.name; })[0];
        if (!section) { return; }
        var badge = $(".step-status", section);
        if (badge) { badge.textContent = step.status; badge.setAttribute("data-state", step.status); }
        var attempts = $(".attempts", section);
        if (attempts) { attempts.textContent = step.attempts + " of " + step.retry_limit; }
        var results = $(".results pre", section);
        if (results && step.results) { results.textContent = JSON.stringify(step.results, null, 2); }
        var error = $(".last-error", section);
        if (error && step.last_error) {
          error.hidden = false;
          var cls = $(".error-class", error);
          var msg = $(".error-message", error);
          if (cls) { cls.textContent = step.last_error.error_class; }
          if (msg) { msg.textContent = step.last_error.message; }
        }
        $all("form[data-when-step]", section).forEach(function (form) {
          if (form.contains(document.activeElement)) { return; } // never hide what is being typed in
          form.hidden = !(allows(form, "data-when-step", step.status) && allows(form, "data-when-task", task.status));
        });
      });
      if (finished.indexOf(task.status) >= 0 && poller) { clearInterval(poller); poller = null; }
    };

    var refresh = function () {
      if (timer) { return; }
      timer = setTimeout(function () {
        timer = null;
        fetch(api, { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (task) { if (task) { apply(task); } })
          .catch(function () { /* offline for a moment: the next event or poll tries again */ });
      }, 150);
    };

    var list = $("#task-events");
    var badge = $(".live-state");
    follow(live.getAttribute("data-stream"), live.getAttribute("data-events") || "",
      function (e) { if (list) { addEvent(list, e, false); } refresh(); },
      function (s) { if (badge) { badge.textContent = s; } });
    // A slow poll as well, so the page stays right even if the stream is refused or cut.
    var current = $("#task-status");
    if (!current || finished.indexOf(current.textContent.trim()) < 0) { poller = setInterval(refresh, 3000); }
  }
})();
