// The incidents feed. Its source is one object: to read incidents instead of raw events
// (when `/v1/incidents` exists), change `path`, `params` and `toEntry` only.

import { getJson } from "./api.js";

export const FEED_SOURCE = {
  label: "events of the last 24 h",
  path: "/v1/events",
  params: (district) => ({ limit: 25, district }),
  // One feed entry from one item of the response's `items`.
  toEntry: (item) => ({
    key: `${item.device_id}/${item.seq}/${item.ts}`,
    ts: item.ts,
    severity: item.severity,
    title: item.type.replaceAll("_", " "),
    where: item.district,
    source: item.device_id,
  }),
};

// A live `event` or `alert` from the stream, as a feed entry (shown before the next poll).
export function liveEntry(type, item) {
  if (type === "alert") {
    const alert = item.alert || {};
    // The alerts service's payload (safecity/incidents.py: Alert.payload).
    return {
      key: `alert/${alert.alert_id ?? Date.now()}`,
      ts: alert.started_at || new Date().toISOString(),
      severity: item.severity,
      title: `alert: ${alert.message || alert.rule_id || "alert"}`,
      where: item.district || "city",
      source: alert.rule_id || "alerts",
    };
  }
  return {
    key: `${item.device_id}/${item.seq}/${item.ts}`,
    ts: item.ts,
    severity: item.severity,
    title: item.event.replaceAll("_", " "),
    where: item.district,
    source: item.device_id,
  };
}

export async function fetchFeed(district = undefined) {
  const body = await getJson(FEED_SOURCE.path, FEED_SOURCE.params(district));
  return body.items.map(FEED_SOURCE.toEntry);
}

const MAX_ENTRIES = 40;

export class Feed {
  constructor(list, nameOf) {
    this.list = list;
    this.nameOf = nameOf;
    this.entries = new Map();
  }

  add(entries) {
    for (const entry of entries) this.entries.set(entry.key, entry);
    const sorted = [...this.entries.values()].sort((a, b) => (a.ts < b.ts ? 1 : -1));
    this.entries = new Map(sorted.slice(0, MAX_ENTRIES).map((e) => [e.key, e]));
    this.render();
  }

  render() {
    const items = [...this.entries.values()].map((entry) => {
      const li = document.createElement("li");
      li.className = `sev-${entry.severity}`;
      const head = document.createElement("span");
      head.className = "feed-title";
      head.textContent = `${entry.severity} · ${entry.title}`;
      const meta = document.createElement("span");
      meta.className = "feed-meta";
      const when = new Date(entry.ts);
      meta.textContent = `${when.toLocaleTimeString()} · ${this.nameOf(entry.where)} · ${entry.source}`;
      li.append(head, meta);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No incidents in the window.";
      items.push(li);
    }
    this.list.replaceChildren(...items);
  }
}
