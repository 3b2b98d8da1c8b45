// The region page: the cities the key may see, side by side, from GET /v1/region/overview.
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

// The time to acknowledge, whatever the name the incidents section gives it.
function tta(incidents) {
  for (const [name, value] of Object.entries(incidents || {})) {
    if (name.includes("acknowledge") && typeof val(value) === "number") return val(value);
  }
  return null;
}

// Delivery: the share of sent messages stored, or the stored/sent counts it rests on.
function delivery(d) {
  if (!d || typeof d !== "object") return "–";
  for (const name of ["ratio", "share_stored", "delivered_share"]) {
    if (typeof val(d[name]) === "number") return pct(val(d[name]));
  }
  const parts = Object.entries(d)
    .filter(([, v]) => typeof val(v) === "number")
    .map(([k, v]) => `${k} ${num(val(v))}`);
  return parts.join(" · ") || "–";
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
  ["Time to acknowledge", (c) => minutes(tta(c.incidents)), () => ""],
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
  const corridors = (body.corridors || []).map((k) => {
    const li = document.createElement("li");
    const name = k.name || k.id || k.corridor || "corridor";
    const figures = Object.entries(k)
      .filter(([, v]) => typeof val(v) === "number")
      .map(([n, v]) => `${n.replaceAll("_", " ")} ${num(val(v), 1)}`);
    li.textContent = `${name}: ${figures.join(" · ") || "no figures yet"}`;
    return li;
  });
  if (!corridors.length) {
    const li = document.createElement("li");
    li.textContent = "No corridor figures.";
    corridors.push(li);
  }
  $("corridors").replaceChildren(...corridors);
}
