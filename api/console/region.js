// The region page: the cities the key may see, side by side, from GET /v1/region/overview
// ({cities: [{city, name, source, air_quality, traffic, noise, devices, incidents,
// response, delivery, ...}], corridors: [{id, name, segments, travel_time_s, speed_kmh}]}).
// Each city's figures are its overview's sections (the same code as the city's own
// overview); `source` says whether they were computed here or federated from the city.

import { getJson } from "./api.js";
import { aqiBand } from "./map.js";

const $ = (id) => document.getElementById(id);

function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}
const pct = (share) => (share === null || share === undefined ? "–" : `${num(share * 100)} %`);
const val = (figure) => (figure && typeof figure === "object" ? figure.value : figure);

function minutes(seconds) {
  return seconds === null || seconds === undefined ? "–" : `${num(seconds / 60, 1)} min`;
}

// Median time to acknowledge of the city's recent incidents (`response`), else the mean.
const tta = (r) => r?.tta_median_s ?? r?.tta_mean_s ?? null;

// Delivery: readings stored against those the devices' cadences promise.
function delivery(d) {
  if (!d || typeof d !== "object") return "–";
  return typeof d.ratio === "number" ? `${pct(d.ratio)} of ${num(d.expected)}` : "–";
}

// Columns: [heading, cell text, css class of the cell].
const COLUMNS = [
  ["City", (c) => c.name || c.city, () => ""],
  ["AQI", (c) => `${num(val(c.air_quality?.aqi))}${c.air_quality?.category ? ` ${c.air_quality.category}` : ""}`, (c) => aqiBand(val(c.air_quality?.aqi))[0]],
  ["Congestion", (c) => pct(val(c.traffic?.congestion_index)), () => ""],
  ["Avg speed", (c) => `${num(val(c.traffic?.avg_speed))} km/h`, () => ""],
  ["Noise LAeq", (c) => `${num(val(c.noise?.laeq), 1)} dB`, () => ""],
  ["Above WHO noise", (c) => pct(val(c.noise?.share_above_who)), () => ""],
  ["Open incidents", (c) => num(c.incidents?.total), () => ""],
  ["Time to acknowledge", (c) => minutes(tta(c.response)), () => ""],
  ["Devices online", (c) => (c.devices ? `${num(c.devices.online)} / ${num(c.devices.total)}` : "–"), () => ""],
  ["Delivery", (c) => delivery(c.delivery), () => ""],
];

export async function showRegion() {
  const body = await getJson("/v1/region/overview");
  const head = $("region-head");
  head.replaceChildren(
    ...COLUMNS.map(([title]) => {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      return th;
    }),
  );
  const rows = (body.cities || []).map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.city = c.city;
    COLUMNS.forEach(([, text, cls], i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) {
        cell.scope = "row";
        const source = document.createElement("span");
        source.className = "source";
        source.textContent = ` ${c.source || ""}`;
        cell.append(text(c), source);
      } else {
        cell.textContent = text(c);
        const css = cls(c);
        if (css) cell.className = css;
      }
      tr.appendChild(cell);
    });
    return tr;
  });
  $("region-body").replaceChildren(...rows);
  $("region-note").textContent = `${rows.length} cities`;
  // A corridor: its travel time and speed when every segment has a figure.
  const corridors = (body.corridors || []).map((k) => {
    const li = document.createElement("li");
    li.dataset.corridor = k.id;
    const known = (k.segments || []).filter((s) => s.travel_time_s !== null).length;
    const figures =
      k.travel_time_s === null || k.travel_time_s === undefined
        ? `${known} of ${(k.segments || []).length} segments measured`
        : `${minutes(k.travel_time_s)} · ${num(k.speed_kmh)} km/h`;
    li.textContent = `${k.name}: ${figures}`;
    return li;
  });
  if (!corridors.length) {
    const li = document.createElement("li");
    li.textContent = "No corridor figures.";
    corridors.push(li);
  }
  $("corridors").replaceChildren(...corridors);
}
