// Acting on the city from the console (scope `operate`): on a district (dim its
// streetlights, reboot its devices of a kind) and on an incident (turn the nearest camera
// to a preset, sound the nearest siren or PA, set the district's streetlights), then
// follow each command's status per device until each is final.

import { getJson, postJson } from "./api.js";

const FINAL = new Set(["executed", "failed", "expired"]);
const KINDS = ["streetlight", "cctv", "panic_button", "air_quality", "weather", "noise", "traffic",
  "parking", "crowd", "waste", "device_health", "gunshot", "anpr"];
const SIGNALS = ["siren", "announcement", "chime"];
const EARTH_M = 6_371_000;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function summary(command) {
  const total = command.deliveries.length;
  const parts = Object.entries(command.statuses).map(([s, n]) => `${s} ${n}`);
  const done = command.deliveries.filter((d) => FINAL.has(d.status)).length;
  return `${command.name}: ${parts.join(" · ")} (${done}/${total} final)`;
}

// Show a command's statuses in `out` (one line) and `list` (a row per device) until final.
async function follow(commandId, out, list) {
  for (let i = 0; i < 240; i += 1) {
    const command = await getJson(`/v1/commands/${encodeURIComponent(commandId)}`);
    out.textContent = summary(command);
    list.replaceChildren(...command.deliveries.map((d) => el("li", {
      className: `cmd-${d.status}`,
      textContent: `${d.device_id}: ${d.status}${d.reason ? ` (${d.reason})` : ""}`,
    })));
    list.querySelectorAll("li").forEach((li, n) => { li.dataset.status = command.deliveries[n].status; });
    if (command.deliveries.every((d) => FINAL.has(d.status))) return;
    await new Promise((r) => setTimeout(r, 500));
  }
}

// Send a command and follow it; a refusal (4xx with the API's reason) shows in `out`.
async function sendAndFollow(url, body, out, list) {
  out.textContent = "sending…";
  try {
    const command = await postJson(url, body);
    out.dataset.command = command.id;
    await follow(command.id, out, list);
  } catch (err) {
    out.textContent = `refused: ${err.message}`;
  }
}

function districtUrl(cityId, districtId) {
  return `/v1/cities/${encodeURIComponent(cityId)}/districts/${encodeURIComponent(districtId)}/commands`;
}

// The "Act on this district" part of the district panel.
export function districtActions(cityId, districtId) {
  const base = districtUrl(cityId, districtId);
  const out = el("p", { id: "cmd-status", className: "window", role: "status" });
  out.setAttribute("aria-live", "polite");
  const list = el("ol", { id: "cmd-deliveries", className: "feed small" });
  const send = (body) => sendAndFollow(base, body, out, list);
  const level = el("input", { id: "cmd-level", type: "number", min: 0, max: 100, value: 50 });
  const dim = el("button", { id: "cmd-dim", type: "button", textContent: "Set streetlights" });
  dim.addEventListener("click", () => send({
    kind: "streetlight", name: "set_level", params: { level: Number(level.value) },
  }));
  const kind = el("select", { id: "cmd-kind" }, ...KINDS.map((k) => el("option", { value: k, textContent: k })));
  const reboot = el("button", { id: "cmd-reboot", type: "button", className: "ghost", textContent: "Reboot" });
  reboot.addEventListener("click", () => send({ kind: kind.value, name: "reboot" }));
  const levelLabel = el("label", { htmlFor: "cmd-level", textContent: "Level %" });
  const kindLabel = el("label", { htmlFor: "cmd-kind", textContent: "Devices" });
  return el("section", { className: "actions", ariaLabel: "Act on this district" },
    el("h3", { textContent: "Act on this district" }),
    el("p", {}, levelLabel, level, dim), el("p", {}, kindLabel, kind, reboot), out, list);
}

// --- acting on an incident -------------------------------------------------------------

// Metres between two {lat, lon} (equirectangular: exact enough within a city).
export function metres(a, b) {
  const rad = Math.PI / 180;
  const x = (b.lon - a.lon) * rad * Math.cos(((a.lat + b.lat) / 2) * rad);
  const y = (b.lat - a.lat) * rad;
  return Math.hypot(x, y) * EARTH_M;
}

// Where an incident is: its first device with a known place, else its district's centre.
export function incidentPlace(entry, devices) {
  const byId = new Map(devices.map((d) => [d.id, d]));
  const own = (entry.devices || []).map((id) => byId.get(id)).find((d) => d && d.location);
  if (own) return own.location;
  const near = devices.filter((d) => d.district === entry.where && d.location);
  if (!near.length) return null;
  const mean = (f) => near.reduce((s, d) => s + d.location[f], 0) / near.length;
  return { lat: mean("lat"), lon: mean("lon") };
}

// The device of `kind` nearest to `place`, with its distance; null if there is none.
export function nearest(devices, kind, place) {
  let best = null;
  for (const d of devices) {
    if (d.kind !== kind || !d.location) continue;
    const m = metres(place, d.location);
    if (!best || m < best.m) best = { device: d, m };
  }
  return best;
}

// One command's row in the incident's command log: a summary line and a row per device.
function logRow(log, label) {
  const out = el("span", { className: "cmd-summary", textContent: label });
  const list = el("ol", { className: "feed small" });
  const row = el("li", { className: "cmd-row" }, out, list);
  log.prepend(row);
  return [out, list];
}

function control(id, label, input) {
  input.id = id;
  return [el("label", { htmlFor: id, textContent: label }), input];
}

function cameraAction(send, hit) {
  const [label, preset] = control("inc-preset", "Preset", el("input", { type: "number", min: 1, max: 255, value: 1 }));
  const go = el("button", { id: "inc-camera", type: "button", textContent: "Move camera" });
  go.addEventListener("click", () => send(`/v1/devices/${encodeURIComponent(hit.device.id)}/commands`,
    { name: "goto_preset", params: { preset: Number(preset.value) } }, `camera ${hit.device.id}`));
  return el("p", { className: "inc-target", id: "inc-camera-target" },
    `Nearest camera: ${hit.device.id} (${Math.round(hit.m)} m) `, label, preset, go);
}

function sirenAction(send, hit) {
  const [sLabel, signal] = control("inc-signal", "Signal",
    el("select", {}, ...SIGNALS.map((s) => el("option", { value: s, textContent: s }))));
  const [dLabel, duration] = control("inc-duration", "Seconds", el("input", { type: "number", min: 1, max: 120, value: 30 }));
  const go = el("button", { id: "inc-sound", type: "button", textContent: "Sound" });
  go.addEventListener("click", () => send(`/v1/devices/${encodeURIComponent(hit.device.id)}/commands`,
    { name: "sound", params: { signal: signal.value, duration_s: Number(duration.value) } },
    `${signal.value} at ${hit.device.id}`));
  return el("p", { className: "inc-target", id: "inc-siren-target" },
    `Nearest siren / PA: ${hit.device.id} (${Math.round(hit.m)} m) `, sLabel, signal, dLabel, duration, go);
}

function lightsAction(send, cityId, district) {
  const [label, level] = control("inc-level", "Level %", el("input", { type: "number", min: 0, max: 100, value: 100 }));
  const go = el("button", { id: "inc-lights", type: "button", textContent: "Set streetlights" });
  go.addEventListener("click", () => send(districtUrl(cityId, district),
    { kind: "streetlight", name: "set_level", params: { level: Number(level.value) } },
    `streetlights of ${district}`));
  return el("p", { className: "inc-target" }, `Streetlights of ${district} `, label, level, go);
}

// The actions that fit an incident, for the devices around it; each command sent shows
// in the panel's log with its live status per device.
export function incidentActions(cityId, entry, devices) {
  const log = el("ol", { id: "inc-commands", className: "feed small" });
  log.setAttribute("aria-live", "polite");
  const query = `?city=${encodeURIComponent(cityId)}`;
  const send = (url, body, label) => {
    const [out, list] = logRow(log, `${label}: sending…`);
    return sendAndFollow(url.startsWith("/v1/devices/") ? url + query : url, body, out, list);
  };
  const place = incidentPlace(entry, devices);
  const parts = [];
  const camera = place && nearest(devices, "cctv", place);
  const siren = place && nearest(devices, "panic_button", place);
  if (camera) parts.push(cameraAction(send, camera));
  if (siren) parts.push(sirenAction(send, siren));
  if (entry.where && entry.where !== "city") parts.push(lightsAction(send, cityId, entry.where));
  if (!parts.length) parts.push(el("p", { textContent: "No devices to act on near this incident." }));
  return el("section", { className: "actions", id: "incident-actions", ariaLabel: "Act on this incident" },
    el("h3", { textContent: `Act on: ${entry.title}` }), ...parts, log);
}
