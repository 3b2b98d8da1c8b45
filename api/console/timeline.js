// An incident's delivery timeline: who was told on which channel when and how it went
// (delivered, failed, pending, cancelled), between the incident's own steps (opened,
// acknowledged by whom and how, resolved), oldest first. It opens under a feed entry and
// is read from `/v1/incidents/{id}` and `/v1/incidents/{id}/notifications`.

import { getJson } from "./api.js";
import { clock } from "./time.js";

const REFRESH_MS = 2000;
const OPEN_EVERY_MS = 4000;

function what(n) {
  if (n.kind === "resolved") return "resolution notice";
  return `tier ${n.tier}${n.repeat ? `, reminder ${n.repeat}` : ""}`;
}

function outcome(n) {
  const tries = `${n.attempts} attempt${n.attempts === 1 ? "" : "s"}`;
  if (n.status === "pending") return `pending, due ${clock(n.not_before)}`;
  if (n.status === "cancelled") return `cancelled: ${n.detail}`;
  if (n.status === "failed") return `failed after ${tries}: ${n.detail}`;
  const latency = n.latency_s === null ? "" : `, ${n.latency_s.toFixed(1)} s`;
  return `delivered (${tries}${latency})`;
}

function lastTry(n) {
  const ended = (n.history || []).map((a) => a.ended_at).filter(Boolean);
  return ended.length ? ended[ended.length - 1] : null;
}

// The rows, in time order: the incident's steps and every notification.
export function timelineRows(incident, notifications) {
  const rows = incident.transitions.map((t) => ({
    ts: t.at,
    status: t.state,
    text: t.state === "open" ? `opened by ${t.by}` : `${t.state} by ${t.by}${t.note ? ` (${t.note})` : ""}`,
  }));
  for (const n of notifications) {
    rows.push({
      ts: n.delivered_at || lastTry(n) || n.not_before,
      status: n.status,
      channel: n.channel,
      person: n.person,
      text: `${what(n)} → ${n.person} via ${n.channel} (${n.recipient}): ${outcome(n)}`,
    });
  }
  return rows.sort((a, b) => Date.parse(a.ts) - Date.parse(b.ts));
}

export class Timeline {
  // `onError(err)` reports a failed read (the console's status line).
  constructor(id, title, onError) {
    this.id = id;
    this.onError = onError;
    this.at = 0;
    this.el = document.createElement("details");
    this.el.className = "timeline";
    this.el.dataset.incident = id;
    const summary = document.createElement("summary");
    summary.textContent = "Notifications";
    summary.setAttribute("aria-label", `Notifications of ${title}`);
    this.list = document.createElement("ol");
    this.list.className = "timeline-rows";
    this.el.append(summary, this.list);
    this.timer = null;
    this.el.addEventListener("toggle", () => this.toggled());
  }

  // While open it follows the deliveries (read now, then every OPEN_EVERY_MS).
  toggled() {
    window.clearInterval(this.timer);
    this.timer = null;
    if (!this.el.open) return;
    this.timer = window.setInterval(() => this.refresh(), OPEN_EVERY_MS);
    this.refresh(true);
  }

  close() {
    window.clearInterval(this.timer);
  }

  // Read again (at most every REFRESH_MS unless `now`) while the timeline is open.
  async refresh(now = false) {
    if (!this.el.open || (!now && Date.now() - this.at < REFRESH_MS)) return;
    this.at = Date.now();
    const path = `/v1/incidents/${encodeURIComponent(this.id)}`;
    try {
      const [incident, notifications] = await Promise.all([getJson(path), getJson(`${path}/notifications`)]);
      this.render(timelineRows(incident, notifications), notifications.length);
    } catch (err) {
      this.onError(err);
    }
  }

  render(rows, sent) {
    const items = rows.map((row) => {
      const li = document.createElement("li");
      li.className = `tl-${row.status}`;
      li.dataset.status = row.status;
      if (row.channel) li.dataset.channel = row.channel;
      if (row.person) li.dataset.person = row.person;
      const when = document.createElement("time");
      when.dateTime = row.ts;
      when.textContent = clock(row.ts);
      li.append(when, ` ${row.text}`);
      return li;
    });
    if (!sent) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "Nobody was notified (no route matched, or no notifier runs).";
      items.push(li);
    }
    this.list.replaceChildren(...items);
    this.el.dataset.loaded = "true";
  }
}
