// The incidents feed. Its source is one object (`FEED_SOURCE`): the incidents the alerts
// service opened, polled from `/v1/incidents`; alerts from the stream add new ones at once.
// A key with the `operate` scope gets the lifecycle buttons of each incident's state and,
// while it is not resolved, "Act": the commands that fit it (commands.js); every entry
// opens its delivery timeline (timeline.js).

import { getJson, postJson } from "./api.js";
import { clock } from "./time.js";
import { Timeline } from "./timeline.js";

export const FEED_SOURCE = {
  label: "incidents of the last 7 days",
  path: "/v1/incidents",
  // As many as the feed keeps, so its open count is the overview's (both: 7 days).
  params: (district, city) => ({ limit: 100, district, city }),
  // One feed entry from one item of the response's `items`.
  toEntry: (item) => ({
    key: item.id,
    id: item.id,
    ts: item.opened_at,
    severity: item.severity,
    state: item.state,
    title: item.message || item.rule_id.replaceAll("_", " "),
    where: item.district,
    source: item.rule_id,
    devices: item.devices,
  }),
};

// The steps each state allows (safecity/incidents.py: ALLOWED), as button labels.
const STEPS = {
  open: [["ack", "Acknowledge"], ["resolve", "Resolve"]],
  acknowledged: [["dispatch", "Dispatch"], ["resolve", "Resolve"]],
  dispatched: [["resolve", "Resolve"]],
  resolved: [],
};

// A live `alert` from the stream (the alerts service's payload, Alert.payload) as an
// open incident, shown before the next poll brings the stored one.
export function liveEntry(type, item) {
  if (type !== "alert") return null;
  const alert = item.alert || {};
  if (!alert.incident_id) return null;
  return {
    key: alert.incident_id,
    id: alert.incident_id,
    ts: alert.started_at || new Date().toISOString(),
    severity: alert.severity || item.severity,
    state: "open",
    title: alert.message || alert.rule_id || "alert",
    where: alert.district || item.district || "city",
    source: alert.rule_id || "alerts",
    devices: alert.devices || [],
    live: true,
  };
}

export async function fetchFeed(district = undefined, city = undefined) {
  const body = await getJson(FEED_SOURCE.path, FEED_SOURCE.params(district, city));
  return body.items.map(FEED_SOURCE.toEntry);
}

const MAX_ENTRIES = 100;

export class Feed {
  // `onStep(entry, action)` runs a lifecycle step; null = a read-only key (no buttons).
  constructor(list, nameOf, openCount = null) {
    this.list = list;
    this.nameOf = nameOf;
    this.openCount = openCount;
    this.entries = new Map();
    this.onStep = null;
    // One timeline per incident shown, kept across renders (it stays open, and fresh).
    this.timelines = new Map();
    this.onError = () => {};
    // `onAct(entry)` opens the incident's actions on devices; null: no "Act" button.
    this.onAct = null;
  }

  timeline(entry) {
    let found = this.timelines.get(entry.id);
    if (!found) {
      found = new Timeline(entry.id, entry.title, (err) => this.onError(err));
      this.timelines.set(entry.id, found);
    }
    found.refresh();
    return found.el;
  }

  add(entries) {
    for (const entry of entries) {
      if (!entry) continue;
      const known = this.entries.get(entry.key);
      // A provisional live entry never hides a stored state that has moved on.
      if (known && known.state !== "open" && entry.state === "open" && entry.live) continue;
      this.entries.set(entry.key, entry);
    }
    const sorted = [...this.entries.values()].sort((a, b) => (a.ts < b.ts ? 1 : -1));
    this.entries = new Map(sorted.slice(0, MAX_ENTRIES).map((e) => [e.key, e]));
    this.render();
  }

  buttons(entry) {
    if (!this.onStep) return null;
    const steps = [...(STEPS[entry.state] || [])];
    if (this.onAct && steps.length) steps.push(["act", "Act"]);
    if (!steps.length) return null;
    const group = document.createElement("span");
    group.className = "feed-actions";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `Actions for ${entry.title}`);
    for (const [action, label] of steps) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `step step-${action}`;
      button.dataset.incident = entry.id;
      button.dataset.action = action;
      button.textContent = label;
      button.setAttribute("aria-label", `${label}: ${entry.title} (${this.nameOf(entry.where)})`);
      const run = action === "act" ? () => this.onAct(entry) : () => this.onStep(entry, action);
      button.addEventListener("click", run);
      group.appendChild(button);
    }
    return group;
  }

  render() {
    // Re-rendering must not throw keyboard focus away from a button being used.
    const active = document.activeElement;
    const focus = active && active.dataset && active.dataset.incident
      ? [active.dataset.incident, active.dataset.action]
      : null;
    const items = [...this.entries.values()].map((entry) => {
      const li = document.createElement("li");
      li.className = `sev-${entry.severity} state-${entry.state}`;
      li.dataset.incident = entry.id;
      li.dataset.state = entry.state;
      const head = document.createElement("span");
      head.className = "feed-title";
      head.textContent = `${entry.severity} · ${entry.title}`;
      const meta = document.createElement("span");
      meta.className = "feed-meta";
      const when = new Date(entry.ts);
      meta.textContent = `${clock(when)} · ${this.nameOf(entry.where)} · ${entry.source}`;
      const state = document.createElement("span");
      state.className = "feed-state";
      state.textContent = entry.state;
      li.append(head, meta, state);
      const actions = this.buttons(entry);
      if (actions) li.appendChild(actions);
      li.appendChild(this.timeline(entry));
      return li;
    });
    for (const [id, gone] of this.timelines) {
      if (this.entries.has(id)) continue;
      gone.close();
      this.timelines.delete(id);
    }
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No incidents in the window.";
      items.push(li);
    }
    this.list.replaceChildren(...items);
    if (this.openCount) {
      const open = [...this.entries.values()].filter((e) => e.state !== "resolved").length;
      this.openCount.textContent = `${open} open`;
      this.openCount.dataset.open = String(open);
    }
    if (focus) {
      const again = this.list.querySelector(
        `button[data-incident="${CSS.escape(focus[0])}"][data-action="${CSS.escape(focus[1])}"]`,
      );
      (again || this.list.querySelector(`li[data-incident="${CSS.escape(focus[0])}"] button`))?.focus();
    }
  }
}

export async function step(entry, action, note = "") {
  return postJson(`/v1/incidents/${encodeURIComponent(entry.id)}/${action}`, note ? { note } : {});
}
