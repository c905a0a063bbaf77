// gated status page: live updates over server-sent events. No inline scripts (the
// Content-Security-Policy forbids them) and no innerHTML: text from the journal (plates,
// names) is only ever set as textContent, so it renders inert.
"use strict";
(function () {
  if (document.body.dataset.page !== "dashboard") return;
  const rows = document.getElementById("live-events");
  const activity = document.getElementById("live-audit");
  const state = document.getElementById("live-state");
  const MAX_ROWS = 20;
  const fmt = (t) => {
    const d = new Date(t * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  };
  const cell = (tr, text) => { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; };
  function addEvent(e) {
    const tr = document.createElement("tr");
    tr.className = e.event_type === "denied" ? "denied" : "allowed";
    tr.dataset.eventId = e.event_id;
    cell(tr, fmt(e.created_at));
    cell(tr, e.lane);
    const plate = cell(tr, "");
    const a = document.createElement("a");
    a.href = "/events/" + encodeURIComponent(e.event_id);
    a.className = "plate";
    a.textContent = e.plate || "—";
    plate.appendChild(a);
    cell(tr, e.event_type + " · " + (e.reason_text || e.reason));
    const pic = cell(tr, "");
    if (e.snapshot) {
      const img = document.createElement("img");
      img.src = "/snapshots/" + encodeURIComponent(e.event_id) + ".jpg";
      img.className = "thumb"; img.alt = "snapshot";
      pic.appendChild(img);
    }
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > MAX_ROWS) rows.removeChild(rows.lastChild);
  }
  function addAudit(a) {
    const li = document.createElement("li");
    li.textContent = `${fmt(a.created_at)} ${a.action} ${a.resource_id || ""} ${a.actor_id || a.actor_type} ${a.status}`;
    li.className = a.status === "success" ? "ok" : "bad";
    li.dataset.action = a.action;
    activity.insertBefore(li, activity.firstChild);
    while (activity.children.length > MAX_ROWS) activity.removeChild(activity.lastChild);
  }
  function setStatus(s) {
    for (const [id, lane] of Object.entries(s.lanes || {})) {
      const card = document.querySelector(`[data-lane="${CSS.escape(id)}"]`);
      if (!card) continue;
      const set = (field, text, cls) => {
        const el = card.querySelector(`[data-field="${field}"]`);
        if (!el) return;
        el.textContent = text;
        if (cls) el.className = cls;
      };
      set("gate", lane.gate, "gate-" + lane.gate);
      set("mode", lane.mode, "mode-" + lane.mode);
      set("alarms", (lane.alarms || []).join(", ") || "none");
      set("relay_fault", lane.relay_fault || "ok");
      set("rules_version", "v" + lane.rules_version);
    }
  }
  function connect() {
    const source = new EventSource("/api/live");
    source.addEventListener("open", () => { state.textContent = "live"; });
    source.addEventListener("error", () => { state.textContent = "reconnecting…"; });
    source.addEventListener("access", (m) => addEvent(JSON.parse(m.data)));
    source.addEventListener("audit", (m) => addAudit(JSON.parse(m.data)));
    source.addEventListener("status", (m) => { setStatus(JSON.parse(m.data)); state.textContent = "live"; });
  }
  connect();
})();
