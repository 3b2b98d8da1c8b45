// The console: KPI tiles with sparklines, the map, the incidents feed and a district
// drill-down. Overviews are polled; live figures come from the SSE stream.

import { districtActions, incidentActions } from "./commands.js";
import {
  AuthError, clearKey, getJson, getKey, getSession, setKey, signOut, stream, takeKeyFromUrl,
} from "./api.js";
import { Feed, FEED_SOURCE, fetchFeed, liveEntry, step } from "./feed.js";
import { aqiBand, CityMap, svg } from "./map.js";
import { showRegion } from "./region.js";
import { downloadReport, fillYears, showReport } from "./report.js";
import { clock, setTimeZone } from "./time.js";

const OVERVIEW_EVERY_MS = 10_000;
const DEVICES_EVERY_MS = 20_000;
const FEED_EVERY_MS = 15_000;
const TICK_MS = 2_000;
const LIVE_WINDOW_MS = 60_000;
const SPARK_POINTS = 40;
const REGION_EVERY_MS = 30_000;
// The city chosen in the switcher: this tab only, like the key.
const CITY_STORE = "safecity.city";

const $ = (id) => document.getElementById(id);
const state = {
  city: null,
  cities: [],
  district: null,
  timers: [],
  abort: null,
  map: null,
  feed: null,
  devices: [],
  regionTimer: null,
};

// --- formatting -----------------------------------------------------------------------

function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}
const pct = (share) => (share === null || share === undefined ? "–" : `${num(share * 100)} %`);

// --- tiles ----------------------------------------------------------------------------

// Each tile: a text value (what screen readers read) plus a sparkline of its history.
const TILES = [
  ["aqi", "Air quality (AQI)"],
  ["congestion", "Traffic congestion"],
  ["noise", "Noise LAeq"],
  ["parking", "Parking occupancy"],
  ["lights", "Streetlights failed"],
  ["devices", "Devices online"],
  ["incidents", "Open incidents"],
  ["readings", "Live readings"],
  ["pm25", "PM2.5 live (60 s)"],
  ["laeq", "Noise live (60 s)"],
];
const tiles = new Map();

function buildTiles() {
  const list = $("tiles");
  list.replaceChildren();
  for (const [id, label] of TILES) {
    const li = document.createElement("li");
    li.className = "tile";
    li.id = `kpi-${id}`;
    const name = document.createElement("span");
    name.className = "tile-label";
    name.textContent = label;
    const value = document.createElement("span");
    value.className = "tile-value";
    value.dataset.value = "";
    value.textContent = "–";
    const sub = document.createElement("span");
    sub.className = "tile-sub";
    const spark = svg("svg", { class: "spark", viewBox: "0 0 100 24", preserveAspectRatio: "none", "aria-hidden": "true" });
    const line = svg("polyline", { points: "" }, spark);
    li.append(name, value, sub, spark);
    list.appendChild(li);
    tiles.set(id, { li, value, sub, line, history: [] });
  }
}

function setTile(id, text, subText = "", point = null, cls = "") {
  const tile = tiles.get(id);
  tile.value.textContent = text;
  tile.sub.textContent = subText;
  tile.li.className = `tile ${cls}`.trim();
  if (point === null || point === undefined || Number.isNaN(point)) return;
  tile.history.push(point);
  if (tile.history.length > SPARK_POINTS) tile.history.shift();
  drawSpark(tile);
}

function drawSpark(tile) {
  const h = tile.history;
  const lo = Math.min(...h);
  const hi = Math.max(...h);
  const span = hi - lo || 1;
  const step = 100 / Math.max(SPARK_POINTS - 1, 1);
  const x0 = 100 - (h.length - 1) * step;
  tile.line.setAttribute(
    "points",
    h.map((v, i) => `${(x0 + i * step).toFixed(1)},${(22 - ((v - lo) / span) * 20).toFixed(1)}`).join(" "),
  );
}

function showOverview(o) {
  const aq = o.air_quality;
  const [cls] = aqiBand(aq.aqi.value);
  setTile("aqi", num(aq.aqi.value), aq.category ?? "no data", aq.aqi.value, cls);
  const t = o.traffic;
  setTile("congestion", pct(t.congestion_index.value), `avg speed ${num(t.avg_speed.value)} km/h`, t.congestion_index.value);
  setTile("noise", `${num(o.noise.laeq.value, 1)} dB`, `${pct(o.noise.share_above_who.value)} above WHO`, o.noise.laeq.value);
  setTile("parking", pct(o.parking.occupancy.value), `${o.parking.occupancy.devices} zones`, o.parking.occupancy.value);
  setTile("lights", num(o.streetlights.failed.value), `on: ${num(o.streetlights.on.value)}`, o.streetlights.failed.value);
  const d = o.devices;
  setTile("devices", `${d.online} / ${d.total}`, `stale ${d.stale} · offline ${d.offline}`, d.online);
  const sev = Object.entries(o.incidents.by_severity).filter(([, n]) => n > 0).map(([s, n]) => `${s} ${n}`);
  setTile("incidents", num(o.incidents.total), sev.join(" · ") || "none", o.incidents.total);
}

// --- live figures from the stream -----------------------------------------------------

const live = { total: 0, arrivals: [], pm25: [], laeq: [] };

function onStreamEvent(type, data) {
  let item;
  try {
    item = JSON.parse(data);
  } catch {
    return;
  }
  const now = Date.now();
  if (type === "reading") {
    live.total += 1;
    live.arrivals.push(now);
    state.map.pulse(item.device_id);
    if (item.kind === "air_quality" && typeof item.values.pm25 === "number") live.pm25.push([now, item.values.pm25]);
    if (item.kind === "noise" && typeof item.values.laeq === "number") live.laeq.push([now, item.values.laeq]);
    setTile("readings", num(live.total), tiles.get("readings").sub.textContent);
  } else if (type === "alert") {
    // A new incident: shown at once, then the stored one (with its buttons' state).
    state.feed.add([liveEntry(type, item)]);
    guard(refreshFeed);
  } else if (type === "dropped") {
    status("live stream dropped (too slow); reconnecting");
  }
}

function tick() {
  const since = Date.now() - LIVE_WINDOW_MS;
  const recent = Date.now() - 10_000;
  live.arrivals = live.arrivals.filter((t) => t >= since);
  live.pm25 = live.pm25.filter(([t]) => t >= since);
  live.laeq = live.laeq.filter(([t]) => t >= since);
  const rate = live.arrivals.filter((t) => t >= recent).length / 10;
  setTile("readings", num(live.total), `${num(rate, 1)} per s`, rate);
  const mean = (xs) => (xs.length ? xs.reduce((s, [, v]) => s + v, 0) / xs.length : null);
  const pm = mean(live.pm25);
  setTile("pm25", pm === null ? "–" : `${num(pm, 1)} µg/m³`, `${live.pm25.length} readings`, pm);
  // Decibels average as energies, not as numbers.
  const energy = mean(live.laeq.map(([t, v]) => [t, 10 ** (v / 10)]));
  const db = energy === null ? null : 10 * Math.log10(energy);
  setTile("laeq", db === null ? "–" : `${num(db, 1)} dB`, `${live.laeq.length} readings`, db);
}

async function runStream(signal) {
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      status("live");
      await stream(`/v1/stream?city=${encodeURIComponent(state.city.id)}`, onStreamEvent, signal);
      backoff = 1000;
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof AuthError) return needKey(err.message);
      status(`live stream interrupted (${err.message}); retrying`);
    }
    await new Promise((resolve) => window.setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 30_000);
  }
}

// --- polling --------------------------------------------------------------------------

async function refreshOverview() {
  const base = `/v1/cities/${encodeURIComponent(state.city.id)}`;
  const [overview, geo] = await Promise.all([getJson(`${base}/overview`), getJson(`${base}/districts`)]);
  showOverview(overview);
  state.map.update(geo);
  if (state.district) await showDistrict(state.district, false);
}

async function refreshDevices() {
  const devices = [];
  for (const status of ["online", "stale", "offline"]) {
    let cursor;
    do {
      const page = await getJson("/v1/devices", { city: state.city.id, status, limit: 500, cursor });
      for (const d of page.items) devices.push(d);
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }
  state.devices = devices;
  state.map.setDevices(devices);
  $("map-note").textContent = `${state.map.districts.size} districts · ${devices.length} devices`;
}

async function refreshFeed() {
  state.feed.add(await fetchFeed(undefined, state.city.id));
}

function every(ms, fn) {
  const run = () => guard(fn);
  state.timers.push(window.setInterval(run, ms));
  return run();
}

async function guard(fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof AuthError) needKey(err.message);
    else status(`API error: ${err.message}`);
  }
}

// --- incident lifecycle (keys with the operate scope) ---------------------------------

const STEP_DONE = { ack: "acknowledged", dispatch: "dispatched", resolve: "resolved" };

function say(text) {
  $("feed-status").textContent = text;
}

async function runStep(entry, action) {
  try {
    const updated = await step(entry, action);
    state.feed.add([FEED_SOURCE.toEntry(updated)]);
    say(`${entry.title}: ${STEP_DONE[action]}.`);
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    say(`Not done: ${err.message}`);
    await guard(refreshFeed);
  }
}

async function loadMe() {
  const me = await getJson("/v1/me");
  const canOperate = me.scopes.includes("operate") || me.scopes.includes("admin");
  state.feed.onStep = canOperate ? runStep : null;
  state.feed.onAct = canOperate ? showIncidentActions : null;
  $("feed-note").textContent = `(${FEED_SOURCE.label} + live${canOperate ? "" : "; read only"})`;
}

// The incident panel: the commands that fit the incident, on the devices around it.
function showIncidentActions(entry) {
  const panel = $("incident-panel");
  const title = $("incident-title");
  title.textContent = `Incident · ${state.map.name(entry.where)}`;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "ghost";
  close.textContent = "Close";
  close.addEventListener("click", () => { panel.hidden = true; panel.replaceChildren(title); });
  panel.replaceChildren(title, incidentActions(state.city.id, entry, state.devices), close);
  panel.dataset.incident = entry.id;
  panel.hidden = false;
  panel.querySelector("button")?.focus();
}

// --- district drill-down --------------------------------------------------------------

function row(dl, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

async function showDistrict(id, announce = true) {
  state.district = id;
  state.map.select(id);
  const panel = $("drill");
  const title = $("drill-title");
  if (announce) {
    title.textContent = state.map.name(id);
    panel.querySelector(".hint")?.remove();
  }
  const base = `/v1/cities/${encodeURIComponent(state.city.id)}/districts/${encodeURIComponent(id)}`;
  const [o, events] = await Promise.all([getJson(`${base}/overview`), fetchFeed(id, state.city.id)]);
  if (state.district !== id) return; // another district was chosen meanwhile
  const dl = document.createElement("dl");
  dl.className = "facts";
  const aq = o.air_quality;
  row(dl, "AQI", `${num(aq.aqi.value)} ${aq.category ? `(${aq.category})` : ""}`.trim());
  row(dl, "Driving pollutant", aq.driving_pollutant ?? "–");
  row(dl, "PM2.5", `${num(aq.pollutants.pm25?.value, 1)} µg/m³`);
  row(dl, "Congestion", pct(o.traffic.congestion_index.value));
  row(dl, "Average speed", `${num(o.traffic.avg_speed.value)} km/h`);
  row(dl, "Noise LAeq", `${num(o.noise.laeq.value, 1)} dB`);
  row(dl, "Parking occupancy", pct(o.parking.occupancy.value));
  row(dl, "Streetlights on / failed", `${num(o.streetlights.on.value)} / ${num(o.streetlights.failed.value)}`);
  row(dl, "People (crowd zones)", num(o.crowd.people.value));
  row(dl, "Devices online / stale / offline", `${o.devices.online} / ${o.devices.stale} / ${o.devices.offline}`);
  row(dl, "Open incidents", num(o.incidents.total));
  const recent = document.createElement("ol");
  recent.className = "feed small";
  for (const e of events.slice(0, 5)) {
    const li = document.createElement("li");
    li.className = `sev-${e.severity}`;
    li.textContent = `${clock(e.ts)} · ${e.severity} · ${e.title}`;
    recent.appendChild(li);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "ghost";
  close.textContent = "Close";
  close.addEventListener("click", closeDistrict);
  const head = document.createElement("p");
  head.className = "window";
  head.textContent = `Last 15 min, to ${clock(o.window.to)}`;
  title.textContent = state.map.name(id);
  panel.replaceChildren(title, head, dl, recent, districtActions(state.city.id, id), close);
  panel.dataset.district = id;
}

function closeDistrict() {
  const id = state.district;
  state.district = null;
  state.map.select(null);
  const panel = $("drill");
  const title = $("drill-title");
  title.textContent = "District";
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Select a district on the map: click it, or Tab to it and press Enter.";
  panel.replaceChildren(title, hint);
  delete panel.dataset.district;
  if (id) state.map.districts.get(id)?.path.focus();
}

// --- start, auth ----------------------------------------------------------------------

function status(text) {
  $("conn").textContent = text;
}

function stop() {
  for (const t of state.timers) window.clearInterval(t);
  state.timers = [];
  state.abort?.abort();
  state.abort = null;
  window.clearInterval(state.regionTimer);
  state.regionTimer = null;
  $("show-region").setAttribute("aria-pressed", "false");
  $("show-region").textContent = "Region";
  $("show-report").setAttribute("aria-pressed", "false");
}

function needKey(message = "") {
  stop();
  clearKey();
  $("person").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-offer").hidden = !state.signInOffered;
  $("app").hidden = true;
  $("region").hidden = true;
  $("report").hidden = true;
  $("show-report").hidden = true;
  $("city-switch").hidden = true;
  $("show-region").hidden = true;
  window.sessionStorage.removeItem(CITY_STORE);
  $("change-key").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message ? `The API refused the key: ${message}` : "";
  status("not connected");
  $("key").focus();
}

// A person signed in through the identity provider: their name, and the way out.
function showPerson(session) {
  $("person").textContent = `${session.name} (${session.scopes.join(", ")})`;
  $("person").hidden = false;
  $("sign-out").hidden = false;
}

async function leave() {
  stop();
  let logoutUrl = null;
  try {
    logoutUrl = await signOut();
  } catch (err) {
    status(`sign-out: ${err.message}`);
  }
  if (logoutUrl) window.location.assign(logoutUrl);
  else window.location.assign("/");
}

async function start() {
  if (!getKey()) {
    const session = await getSession();
    state.signInOffered = session.sign_in;
    if (!session.signed_in) return needKey();
    showPerson(session);
  }
  status("connecting");
  try {
    const cities = await getJson("/v1/cities");
    state.cities = cities.items;
    const wanted = window.sessionStorage.getItem(CITY_STORE);
    state.city = cities.items.find((c) => c.id === wanted) || cities.items[0];
    showSwitcher();
    setTimeZone(state.city.timezone);
    const geo = await getJson(`/v1/cities/${encodeURIComponent(state.city.id)}/districts`);
    $("city-name").textContent = state.city.name;
    document.title = `${state.city.name} · safecity console`;
    $("auth").hidden = true;
    $("app").hidden = false;
    $("change-key").hidden = !getKey();
    $("show-report").hidden = false;
    state.map.draw(geo);
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    return status(`API error: ${err.message}`);
  }
  $("feed-note").textContent = `(${FEED_SOURCE.label} + live)`;
  await guard(loadMe);
  state.abort = new AbortController();
  runStream(state.abort.signal);
  state.timers.push(window.setInterval(tick, TICK_MS));
  await Promise.all([
    every(OVERVIEW_EVERY_MS, refreshOverview),
    every(DEVICES_EVERY_MS, refreshDevices),
    every(FEED_EVERY_MS, refreshFeed),
  ]);
  document.body.dataset.ready = "true";
}

// --- several cities: the switcher and the region page ----------------------------------

// Only the cities the key may see (GET /v1/cities lists no other); one city: no switcher.
function showSwitcher() {
  const select = $("city-switch");
  const several = state.cities.length > 1;
  select.hidden = !several;
  $("show-region").hidden = !several;
  select.replaceChildren(
    ...state.cities.map((c) => {
      const option = document.createElement("option");
      option.value = c.id;
      option.textContent = c.name;
      option.selected = c.id === state.city.id;
      return option;
    }),
  );
}

function switchCity(id) {
  if (!id || id === state.city?.id) return;
  window.sessionStorage.setItem(CITY_STORE, id);
  // A fresh page: nothing of the previous city (map, feed, live figures) stays on screen.
  window.location.reload();
}

async function refreshRegion() {
  try {
    await showRegion();
    $("region-status").textContent = "";
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    $("region-status").textContent = `Regional view unavailable: ${err.message}`;
  }
}

function toggleRegion() {
  const button = $("show-region");
  const showing = button.getAttribute("aria-pressed") === "true";
  button.setAttribute("aria-pressed", String(!showing));
  button.textContent = showing ? "Region" : "City";
  $("region").hidden = showing;
  $("report").hidden = true;
  $("show-report").setAttribute("aria-pressed", "false");
  $("app").hidden = !showing;
  window.clearInterval(state.regionTimer);
  state.regionTimer = null;
  if (!showing) {
    state.regionTimer = window.setInterval(refreshRegion, REGION_EVERY_MS);
    refreshRegion();
  }
}

// The annual report: a page of its own in place of the city (or the region) page.
async function refreshReport() {
  $("report-status").textContent = "loading";
  try {
    await showReport(state.city.id, $("report-year").value);
    $("report-status").textContent = "";
    document.body.dataset.report = $("report-year").value;
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    $("report-status").textContent = `Report unavailable: ${err.message}`;
  }
}

function toggleReport() {
  const button = $("show-report");
  const showing = button.getAttribute("aria-pressed") === "true";
  button.setAttribute("aria-pressed", String(!showing));
  $("report").hidden = showing;
  $("app").hidden = !showing;
  $("region").hidden = true;
  if (!showing) {
    fillYears();
    refreshReport();
  }
}

async function saveReport() {
  try {
    await downloadReport(state.city.id, $("report-year").value);
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    $("report-status").textContent = `Download failed: ${err.message}`;
  }
}

function init() {
  takeKeyFromUrl();
  buildTiles();
  state.map = new CityMap($("map"), (id) => guard(() => showDistrict(id)));
  state.feed = new Feed($("feed"), (id) => state.map.name(id), $("feed-open"));
  state.feed.onError = (err) => (err instanceof AuthError ? needKey(err.message) : status(`API error: ${err.message}`));
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (!key) return;
    setKey(key);
    start();
  });
  $("change-key").addEventListener("click", () => needKey());
  $("sign-out").addEventListener("click", leave);
  $("city-switch").addEventListener("change", (ev) => switchCity(ev.target.value));
  $("show-region").addEventListener("click", toggleRegion);
  $("show-report").addEventListener("click", toggleReport);
  $("report-year").addEventListener("change", refreshReport);
  $("report-csv").addEventListener("click", saveReport);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.district) closeDistrict();
  });
  start();
}

init();
