/* Tasker dashboard: the few live and interactive parts of server-rendered pages.
 *
 * - forms with data-confirm ask with window.confirm before they are sent;
 * - JSON fields (resolve results, a new task's context) are checked by the server, which answers 422
 *   with the error next to the field and the text kept, so there is one rule in one place;
 * - the task page follows its task over the API's SSE stream and re-reads GET /api/v1/tasks/{id}
 *   to recolour the DAG, the statuses, results and errors, to fill in control-flow decisions as
 *   they are made, to count a fan-out's finished instances, to link a sub-workflow's step to the
 *   child task it creates (and follow that child's status), and to show the actions that apply;
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
    if (form.id === "bulk") { confirmBulk(event, form); return; }
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  // -- tasks list: selection and bulk actions ---------------------------------------------------
  // A bulk action applies to the rows ticked, or to every task matching the list's filter
  // ("all N matching"). Before it is sent, the server's dry run says how many tasks it would
  // change, and the confirmation shows that count; the result is the flash message after it.
  var matching = $("#select-matching");
  var note = $("#selected-count");
  var idle = "Select tasks to act on them.";
  var matchingCount = null;

  var filterParams = function (form, params) {
    $all("input[data-filter]", form).forEach(function (input) {
      params.append(input.name, input.value);
    });
  };

  var updateNote = function () {
    if (!note) { return; }
    if (matching && matching.checked) {
      note.textContent = matchingCount === null ? "Every matching task selected."
        : "All " + matchingCount + " matching task(s) selected.";
      return;
    }
    var n = $all("input[name=ids]:checked").length;
    note.textContent = n ? n + " selected" : idle;
  };

  var preview = function (form, params) {
    var base = form.getAttribute("data-preview") || "/tasks/bulk/preview";
    var url = base + "?" + params.toString();
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .catch(function () { return null; });
  };

  var PAST = { retry: "retried", cancel: "cancelled", purge: "purged (deleted for good)" };

  function confirmBulk(event, form) {
    if (form.getAttribute("data-confirmed") === "1") {  // the second pass: the user said yes
      form.removeAttribute("data-confirmed");
      return;
    }
    event.preventDefault();
    var submitter = event.submitter;
    var action = submitter ? submitter.value : "";
    var everything = matching && matching.checked;
    var ids = $all("input[name=ids]:checked", form).map(function (box) { return box.value; });
    if (!everything && !ids.length) {
      if (note) { note.textContent = "Select at least one task first."; }
      return;
    }
    var params = new URLSearchParams();
    params.set("action", action);
    if (everything) {
      params.set("scope", "filter");
      filterParams(form, params);
    } else {
      ids.forEach(function (id) { params.append("ids", id); });
    }
    preview(form, params).then(function (p) {
      if (p && p.error) {
        if (note) { note.textContent = p.error; }
        return;
      }
      var verb = action.charAt(0).toUpperCase() + action.slice(1);
      var question = verb + " " + (p ? p.what : ids.length + " selected task(s)") + "?";
      if (p && typeof p.would_change === "number") {
        var others = everything ? "." : " (the others are not in a state to " + action + ").";
        question += "\n\nDry run: " + p.would_change.toLocaleString("en-US") +
          " task(s) would be " + (PAST[action] || action) + others;
      }
      if (!window.confirm(question)) { return; }
      form.setAttribute("data-confirmed", "1");
      if (form.requestSubmit) { form.requestSubmit(submitter); } else { form.submit(); }
    });
  }

  var all = $("#select-all");
  if (all) {
    all.addEventListener("change", function () {
      $all("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
      updateNote();
    });
    $all("input[name=ids]").forEach(function (box) { box.addEventListener("change", updateNote); });
  }
  if (matching) {
    matching.addEventListener("change", updateNote);
    var params = new URLSearchParams();
    params.set("scope", "filter");
    filterParams(matching.form, params);
    preview(matching.form, params).then(function (p) {
      if (!p || typeof p.matching !== "number") { return; }
      matchingCount = p.matching.toLocaleString("en-US") + (p.capped ? "+" : "");
      var label = $("#matching-label");
      if (label) { label.textContent = "All " + matchingCount + " task(s) matching this filter"; }
      updateNote();
    });
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

  // -- task page: live DAG, statuses, results, decisions, fan-outs, actions -----------------------
  var live = $("#task-live");
  if (live) {
    var api = live.getAttribute("data-api");
    var words = function (attr) { return (live.getAttribute(attr) || "").split(" ").filter(Boolean); };
    var finished = words("data-finished");
    var doneStates = words("data-done-states");
    var stateOrder = words("data-states");
    var conditionError = live.getAttribute("data-condition-error") || "";
    var childNotYet = live.getAttribute("data-child-not-yet") || "";
    var childNone = live.getAttribute("data-child-none") || "";
    var tasksApi = api.slice(0, api.lastIndexOf("/") + 1);
    var SVG = "http://www.w3.org/2000/svg";
    var timer = null;
    var poller = null;
    var busy = false;
    var again = false;
    var delay = 150;

    // The page's parts by step name, found once: a fan-out's task may have 10,000 steps, so each
    // refresh is one pass over them, never a DOM search per step.
    var byName = function (selector, attr) {
      var found = {};
      $all(selector).forEach(function (el) { found[el.getAttribute(attr)] = el; });
      return found;
    };
    var nodes = byName("#dag g.node", "data-step");
    var sections = byName("section.step[data-step]", "data-step");
    var rows = byName("tr[data-instance]", "data-instance");
    // The last status seen of each sub-workflow's step, and the child reads in flight.
    var taskSteps = {};
    $all("section.step[data-task]").forEach(function (section) {
      var badge = $(".step-status", section);
      taskSteps[section.getAttribute("data-step")] = badge ? badge.textContent.trim() : "";
    });
    var reading = {};

    var allows = function (el, attr, value) {
      var list = el.getAttribute(attr);
      return list === null || list.split(" ").indexOf(value) >= 0;
    };
    var number = function (n) { return n.toLocaleString("en-US"); };

    // A decision's text split at its backticks, the odd parts `quoted` (shown as code), as
    // tasker.web.pages.task.code_spans splits it.
    var codeSpans = function (text) {
      var parts = text.split("`");
      return parts.length % 2 === 0 ? [text] : parts;
    };
    var fillCode = function (el, text) {
      while (el.firstChild) { el.removeChild(el.firstChild); }
      codeSpans(text).forEach(function (part, i) {
        if (!part) { return; }
        if (i % 2 === 1) {
          var code = document.createElement("code");
          code.textContent = part;
          el.appendChild(code);
        } else {
          el.appendChild(document.createTextNode(part));
        }
      });
    };

    // Why a step was skipped, or that its condition held (none for a failed condition: its error
    // says it), filled in as soon as the decision is made.
    var showDecision = function (section, step) {
      if (!step.decision) { return; }
      var kind = step.status === "skipped" ? "skipped" : (step.wait ? "wait" : "held");
      if (kind === "held" && step.last_error && step.last_error.error_class === conditionError) { return; }
      var current = $all(".decision", section).filter(function (el) { return el.parentNode === section; })[0];
      var shown = current && $(".decision-text", current);
      if (current && current.getAttribute("data-decision") === kind && shown &&
          shown.textContent === codeSpans(step.decision).join("")) { return; }
      var model = $("#decision-" + kind);
      if (!model || !model.content.firstElementChild) { return; }
      var note = model.content.firstElementChild.cloneNode(true);
      var text = $(".decision-text", note);
      if (text) { fillCode(text, step.decision); }
      if (current) { section.replaceChild(note, current); }
      else { section.insertBefore(note, $(".last-error", section) || null); }
    };

    // A fan-out's progress, as tasker.web.dag.Progress says it.
    var progressLine = function (p) {
      return p.done + "/" + p.total + " done" + (p.failed ? ", " + p.failed + " failed" : "");
    };

    // A sub-workflow's child as tasker.web.dag.ChildRef says it: `child task 42 (ns/name@1.0.0)`,
    // then its status.
    var childName = function (id, template) { return "child task " + id + " (" + template + ")"; };
    var childText = function (node) {
      var id = node.getAttribute("data-child");
      if (!id) { return ""; }
      var status = node.getAttribute("data-child-status");
      return childName(id, node.getAttribute("data-child-template") || "") + (status ? ", " + status : "");
    };

    // The tooltip keeps the step's control flow (data-about) and a sub-workflow's child
    // (data-child...) when its state changes, as tasker.web.dag.Node.title says them.
    var nodeTitle = function (node, head) {
      var title = $("title", node);
      if (!title) { return; }
      title.textContent = [head, node.getAttribute("data-about"), childText(node)].filter(Boolean).join("; ");
      var badge = $(".task-badge title", node);
      if (badge && node.getAttribute("data-child")) { badge.textContent = "open " + childText(node); }
    };

    var setNode = function (node, step, p) {
      node.setAttribute("data-state", step.status);
      var head = step.name + ": " + step.status;
      if (p) {
        node.setAttribute("data-fanout", p.total);
        node.setAttribute("data-done", p.done);
        node.setAttribute("data-failed", p.failed);
        var sub = $("text.progress", node);
        if (sub) { sub.textContent = progressLine(p); }
        head += ", " + progressLine(p);
      }
      nodeTitle(node, head);
    };

    // -- sub-workflows: the child task a `task:` step created, named by the step's decision (as
    // tasker.store.completion.create_child writes it), linked from its entry and its node's badge.
    var WAITING_FOR = /^waiting for child task (\d+) \((.*)\)$/;
    var childOf = function (step) {
      var m = WAITING_FOR.exec(step.decision || "");
      return m ? { id: m[1], template: m[2] } : null;
    };

    var showChildStatus = function (section, node, status) {
      var badge = section && $(".child-status", section);
      if (badge) { badge.textContent = status; badge.setAttribute("data-state", status); }
      if (node) {
        node.setAttribute("data-child-status", status);
        nodeTitle(node, node.getAttribute("data-step") + ": " + node.getAttribute("data-state"));
      }
    };

    // The child's status: read when the child appears, when its step moves, and while the child
    // is still running (one read at a time per child).
    var readChild = function (id, section, node) {
      if (reading[id]) { return; }
      reading[id] = true;
      fetch(tasksApi + id, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (child) { if (child && child.status) { showChildStatus(section, node, child.status); } })
        .catch(function () { /* the next refresh reads it again */ })
        .then(function () { reading[id] = false; });
    };

    var linkChild = function (section, node, child) {
      var cell = section && $(".child-task", section);
      if (cell && cell.getAttribute("data-child") !== child.id) {
        while (cell.firstChild) { cell.removeChild(cell.firstChild); }
        var a = document.createElement("a");
        a.className = "child-link";
        a.href = "/tasks/" + child.id;
        a.textContent = childName(child.id, child.template);
        var status = document.createElement("span");
        status.className = "status child-status";
        status.textContent = "\u2026";
        cell.appendChild(a);
        cell.appendChild(document.createTextNode(", "));
        cell.appendChild(status);
        cell.setAttribute("data-child", child.id);
      }
      if (node && node.getAttribute("data-child") !== child.id) {
        node.setAttribute("data-child", child.id);
        node.setAttribute("data-child-template", child.template);
        node.removeAttribute("data-child-status");
        var badge = $(".task-badge", node);
        if (badge && !(badge.parentNode instanceof SVGAElement)) {
          var link = document.createElementNS(SVG, "a");
          link.setAttribute("class", "child-link");
          link.setAttribute("href", "/tasks/" + child.id);
          badge.parentNode.insertBefore(link, badge);
          link.appendChild(badge);
        } else if (badge) {
          badge.parentNode.setAttribute("href", "/tasks/" + child.id);
        }
      }
    };

    // Returns whether the step's decision is its child's (the child's line says it instead).
    var showChild = function (section, node, step) {
      if (!section || !section.hasAttribute("data-task")) { return false; }
      var moved = taskSteps[step.name] !== step.status;
      taskSteps[step.name] = step.status;
      var child = childOf(step);
      var cell = $(".child-task", section);
      var known = cell && cell.getAttribute("data-child");
      if (child) {
        moved = moved || known !== child.id;
        linkChild(section, node, child);
      } else if (!known) {
        var none = $(".child-none", section);
        if (none) { none.textContent = ["pending", "ready", "in_progress"].indexOf(step.status) >= 0 ? childNotYet : childNone; }
        return false;
      }
      var id = child ? child.id : known;
      var shown = $(".child-status", section);
      if (moved || !shown || finished.indexOf(shown.textContent.trim()) < 0) { readChild(id, section, node); }
      return child !== null;
    };

    // The line under a fan-out's table: the instances it does not list, by state.
    var moreLine = function (counts, listed) {
      var total = 0;
      var parts = [];
      stateOrder.forEach(function (state) {
        var n = counts[state] || 0;
        if (n) { total += n; parts.push(number(n) + " " + state.replace(/_/g, " ")); }
      });
      if (!total) { return ""; }
      return (listed ? "and " + number(total) + " more" : number(total) + " instances") + " (" + parts.join(", ") + ")";
    };

    var setInstance = function (row, step, taskStatus) {
      row.setAttribute("data-state", step.status);
      var badge = $(".instance-status", row);
      if (badge) { badge.textContent = step.status; badge.setAttribute("data-state", step.status); }
      var attempts = $(".instance-attempts", row);
      if (attempts) { attempts.textContent = step.attempts + " of " + step.retry_limit; }
      var error = $(".instance-error", row);
      if (error && step.last_error) {
        var text = step.last_error.error_class + ": " + step.last_error.message;
        error.textContent = text.length > 160 ? text.slice(0, 159) + "\u2026" : text;
        error.title = text;
      }
      $all("form[data-when-instance]", row).forEach(function (form) {
        if (form.contains(document.activeElement)) { return; }
        form.hidden = !(allows(form, "data-when-instance", step.status) && allows(form, "data-when-task", taskStatus));
      });
    };

    // A fan-out's results: its count and the first few of its list, as the server shows them.
    var showResults = function (section, step) {
      var pre = $(".results pre", section);
      if (!pre || !step.results) { return; }
      var results = step.results;
      var note = $(".results-note", section);
      var preview = parseInt(pre.getAttribute("data-preview") || "0", 10);
      var listed = results.results;
      if (preview && step.fanout !== null && Array.isArray(listed) && listed.length > preview) {
        results = Object.assign({}, results, { results: listed.slice(0, preview) });
        if (note) {
          note.textContent = "the first " + preview + " of " + number(listed.length) + " results; the API has them all";
          note.hidden = false;
        }
      }
      pre.textContent = JSON.stringify(results, null, 2);
    };

    var apply = function (task) {
      var status = $("#task-status");
      if (status) { status.textContent = task.status; status.setAttribute("data-state", task.status); }
      $all("form[data-when-task]").forEach(function (form) {
        if (!form.hasAttribute("data-when-step") && !form.hasAttribute("data-when-instance")) {
          form.hidden = !allows(form, "data-when-task", task.status);
        }
      });
      var steps = task.steps || [];
      // One pass over the instances: each fan-out's counts, and the rows the page lists.
      var fanouts = {};
      steps.forEach(function (step) {
        if (step.instance_of === null || step.instance_of === undefined) { return; }
        var f = fanouts[step.instance_of] || (fanouts[step.instance_of] = { done: 0, failed: 0, unlisted: {}, listed: 0 });
        if (doneStates.indexOf(step.status) >= 0) { f.done += 1; }
        if (step.status === "error") { f.failed += 1; }
        var row = rows[step.name];
        if (row) { f.listed += 1; setInstance(row, step, task.status); }
        else { f.unlisted[step.status] = (f.unlisted[step.status] || 0) + 1; }
      });
      steps.forEach(function (step) {
        if (step.instance_of !== null && step.instance_of !== undefined) { return; }
        var f = fanouts[step.id] || { done: 0, failed: 0, unlisted: {}, listed: 0 };
        var p = step.fanout === null || step.fanout === undefined ? null
          : { done: f.done, total: step.fanout, failed: f.failed };
        var node = nodes[step.name];
        if (node) { setNode(node, step, p); }
        var section = sections[step.name];
        if (!section) { return; }
        var badge = $(".step-status", section);
        if (badge) { badge.textContent = step.status; badge.setAttribute("data-state", step.status); }
        var attempts = $(".attempts", section);
        if (attempts) { attempts.textContent = step.attempts + " of " + step.retry_limit; }
        var progress = $(".fanout-progress", section);
        if (progress && !p && step.status !== "pending" && step.status !== "ready") {
          progress.textContent = "not expanded";
        }
        if (p) {
          if (progress) { progress.textContent = progressLine(p); }
          var more = $(".instances .more", section);
          if (more) {
            more.textContent = moreLine(f.unlisted, f.listed);
            more.hidden = !more.textContent;
          }
        }
        if (!showChild(section, node, step)) { showDecision(section, step); }
        showResults(section, step);
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
      // A large task is read less often: its JSON grows with its steps.
      delay = Math.min(2000, 150 + Math.floor(steps.length / 5));
      if (finished.indexOf(task.status) >= 0 && poller) { clearInterval(poller); poller = null; }
    };

    // One read at a time; an event during a read asks for one more after it.
    var refresh = function () {
      if (busy) { again = true; return; }
      if (timer) { return; }
      timer = setTimeout(function () {
        timer = null;
        busy = true;
        fetch(api, { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (task) { if (task) { apply(task); } })
          .catch(function () { /* offline for a moment: the next event or poll tries again */ })
          .then(function () {
            busy = false;
            if (again) { again = false; refresh(); }
          });
      }, delay);
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
