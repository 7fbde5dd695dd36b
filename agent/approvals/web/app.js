// The reviewers' page: polls the approval queue once a second and updates
// rows in place, so a comment being typed survives refreshes. Every value
// from the server is set with textContent, never as HTML.
"use strict";

const pollMs = 1000;
let csrf = "";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

async function api(path, opts) {
  opts = opts || {};
  opts.headers = Object.assign({"Accept": "application/json"}, opts.headers || {});
  if (opts.method === "POST") {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-Interlock-CSRF"] = csrf;
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    showLogin();
    throw new Error("signed out");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("queue").hidden = true;
  document.getElementById("who").hidden = true;
}

// when shows a time of day on the 24-hour clock, as the CLI does, whatever
// the browser's locale.
function when(ts) {
  const d = new Date(ts);
  const p = n => String(n).padStart(2, "0");
  return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
}

// whenEl is when(ts) with the full local date and time on hover.
function whenEl(ts) {
  const d = new Date(ts);
  const p = n => String(n).padStart(2, "0");
  const full = d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + when(ts);
  return el("time", {datetime: d.toISOString(), title: full}, when(ts));
}

function left(deadline) {
  const s = Math.max(0, Math.round((new Date(deadline) - Date.now()) / 1000));
  return s >= 120 ? Math.round(s / 60) + " min" : s + " s";
}

// requester names the user the held process runs as: that user can never
// decide its own request.
function requester(a) {
  if (a.uid === undefined) return "uid unknown";
  return "uid " + a.uid + (a.user ? " (" + a.user + ")" : " (no user name)");
}

function who(a) {
  return el("span", {}, a.identity, el("br"), el("span", {class: "requester"}, requester(a)), el("br"),
    el("span", {class: "muted"}, "pid " + a.pid + " " + shown(a.exe) + " on " + a.host));
}

// shown is what an agent chose (a statement, its executable's name) as a
// reviewer must read it: the characters that would break its line, hide
// part of it or show it reordered (controls, bidirectional overrides) as
// escapes, as the CLI shows them.
function shown(s) {
  return s.replace(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]/g, (c) => {
    const n = c.charCodeAt(0);
    if (c === "\n") return "\\n";
    if (c === "\r") return "\\r";
    return n < 0x80 ? "\\x" + n.toString(16).padStart(2, "0") : "\\u" + n.toString(16).padStart(4, "0");
  });
}

// soFar is a collapsed view of the held session's messages so far, loaded
// each time it is opened.
function soFar(a) {
  const pre = el("pre", {class: "so-far"});
  const box = el("details", {class: "so-far"}, el("summary", {}, "session so far"), pre);
  box.addEventListener("toggle", async () => {
    if (!box.open) return;
    pre.textContent = "loading\u2026";
    pre.textContent = await transcript(a.session);
  });
  return box;
}

async function transcript(id) {
  const r = await fetch("/api/sessions/" + encodeURIComponent(id) + "/transcript");
  if (r.ok) return r.text();
  const body = await r.json().catch(() => ({}));
  return "cannot show the session: " + (body.error || r.statusText);
}

function votes(a) {
  const n = a.votes.filter(v => v.approve).length;
  const names = a.votes.map(v => v.reviewer + (v.approve ? " \u2713" : " \u2717") + (v.comment ? ": " + v.comment : ""));
  return n + "/" + a.quorum + (names.length ? " (" + names.join("; ") + ")" : "");
}

function pendingRow(a) {
  const comment = el("input", {class: "comment", type: "text", placeholder: "comment", maxlength: "1000"});
  const approve = el("button", {class: "approve", type: "button"}, "Approve");
  const deny = el("button", {class: "deny", type: "button"}, "Deny");
  const cancel = el("button", {class: "cancel", type: "button", hidden: ""}, "Cancel");
  const msg = el("span", {class: "msg"});
  // Deny fails the agent's statement at once and cannot be taken back, so
  // it takes a second click.
  const confirming = (on) => {
    deny.classList.toggle("confirm", on);
    deny.textContent = on ? "Really deny" : "Deny";
    cancel.hidden = !on;
    msg.className = "msg";
    msg.textContent = on ? "the statement will fail with a permission error" : "";
  };
  const decide = async (verb) => {
    cancel.hidden = true;
    approve.disabled = deny.disabled = true;
    msg.className = "msg";
    msg.textContent = "sending\u2026";
    try {
      const res = await api("/api/approvals/" + encodeURIComponent(a.id) + "/" + verb,
        {method: "POST", body: JSON.stringify({comment: comment.value})});
      msg.textContent = "you " + (verb === "approve" ? "approved" : "denied") + "; now " + res.state;
      refresh();
    } catch (e) {
      confirming(false);
      msg.className = "msg error";
      msg.textContent = e.message;
      approve.disabled = deny.disabled = false;
    }
  };
  approve.addEventListener("click", () => decide("approve"));
  deny.addEventListener("click", () => {
    if (deny.classList.contains("confirm")) decide("deny"); else confirming(true);
  });
  cancel.addEventListener("click", () => confirming(false));
  const tr = el("tr", {"data-id": a.id},
    el("td", {}, whenEl(a.requested), el("br"), el("span", {class: "muted"}, a.id)),
    el("td", {}, who(a)),
    el("td", {}, a.target, el("br"), el("span", {class: "muted"}, "rule " + a.rule)),
    el("td", {}, el("code", {}, shown(a.statement)), soFar(a)),
    el("td", {}, el("span", {class: "votes"}), el("br"), el("span", {class: "muted"}, "reviewers: " + a.reviewers.join(", "))),
    el("td", {class: "left"}),
    el("td", {}, comment, " ", approve, " ", deny, " ", cancel, msg));
  updatePending(tr, a);
  return tr;
}

function updatePending(tr, a) {
  tr.querySelector(".votes").textContent = votes(a);
  tr.querySelector(".left").textContent = left(a.deadline);
}

function decidedRow(a) {
  return el("tr", {"data-id": a.id, "data-state": a.state},
    el("td", {}, whenEl(a.requested), el("br"), el("span", {class: "muted"}, a.id)),
    el("td", {}, who(a)),
    el("td", {}, a.target, el("br"), el("span", {class: "muted"}, "rule " + a.rule)),
    el("td", {}, el("code", {}, shown(a.statement))),
    el("td", {class: "state-" + a.state}, a.state),
    el("td", {}, votes(a)));
}

async function refresh() {
  let list;
  try {
    list = await api("/api/approvals?limit=100");
  } catch (e) {
    document.getElementById("status").textContent = "cannot load the queue: " + e.message;
    return;
  }
  document.getElementById("status").textContent = "updated " + when(Date.now());
  const pending = document.getElementById("pending");
  const seen = new Set();
  for (const a of list.filter(a => a.state === "pending").reverse()) {
    seen.add(a.id);
    const tr = pending.querySelector('tr[data-id="' + CSS.escape(a.id) + '"]');
    if (tr) updatePending(tr, a); else pending.prepend(pendingRow(a));
  }
  for (const tr of Array.from(pending.children)) {
    if (!seen.has(tr.dataset.id)) tr.remove();
  }
  document.getElementById("pending-count").textContent = "(" + seen.size + ")";
  document.getElementById("no-pending").hidden = seen.size > 0;
  const decided = document.getElementById("decided");
  decided.replaceChildren(...list.filter(a => a.state !== "pending").slice(0, 20).map(decidedRow));
}

async function loadSessions() {
  let list;
  try {
    list = await api("/api/sessions?limit=30");
  } catch (e) {
    return;
  }
  const tbody = document.getElementById("sessions");
  tbody.replaceChildren(...list.map(s => {
    const b = el("button", {type: "button", class: "show"}, "transcript");
    b.addEventListener("click", () => showTranscript(s.id));
    return el("tr", {"data-id": s.id},
      el("td", {}, whenEl(s.started)), el("td", {}, s.identity), el("td", {}, s.target + " (" + s.protocol + ")"),
      el("td", {}, s.host), el("td", {}, String(s.messages)), el("td", {}, s.ended ? s.outcome : "open"), el("td", {}, b));
  }));
}

async function showTranscript(id) {
  const box = document.getElementById("transcript-box");
  const pre = document.getElementById("transcript");
  document.getElementById("transcript-id").textContent = id;
  box.hidden = false;
  pre.textContent = await transcript(id);
}

async function start() {
  let me;
  try {
    me = await api("/api/me");
  } catch (e) {
    return;
  }
  csrf = me.csrf;
  document.getElementById("reviewer").textContent = me.reviewer;
  document.getElementById("who").hidden = false;
  document.getElementById("queue").hidden = false;
  await refresh();
  loadSessions();
  setInterval(refresh, pollMs);
  setInterval(loadSessions, 10 * pollMs);
}

start();
