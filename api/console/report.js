// The annual air-quality report page, from GET /v1/cities/{city}/reports/air-quality?year=
// ({year, from, to, served_by, areas: [{district, name, pollutants: {pm25: {annual_mean,
// annual_guideline, exceeds_annual, daily_guideline, days_above, days_with_data,
// days_in_period, completeness, valid, readings, worst_episodes: [{start, end, days,
// peak, peak_day}]}}}]}): the city and each district against the WHO 2021 guidelines,
// and the same report as CSV (fetched with the key, then saved from a Blob).

import { getBlob, getJson } from "./api.js";

const $ = (id) => document.getElementById(id);
const LABELS = { pm25: "PM2.5", pm10: "PM10", no2: "NO2" };
const FIRST_YEAR = 2020;

function num(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

const path = (city) => `/v1/cities/${encodeURIComponent(city)}/reports/air-quality`;

function cell(tag, text, css = "") {
  const el = document.createElement(tag);
  el.textContent = text;
  if (css) el.className = css;
  return el;
}

// The year picker: this year back to FIRST_YEAR (once).
export function fillYears() {
  const select = $("report-year");
  if (select.options.length) return;
  const now = new Date().getUTCFullYear();
  for (let year = now; year >= FIRST_YEAR; year -= 1) {
    const option = document.createElement("option");
    option.value = String(year);
    option.textContent = String(year);
    select.appendChild(option);
  }
}

function header(pollutants) {
  const top = document.createElement("tr");
  top.append(cell("th", ""));
  const sub = document.createElement("tr");
  sub.append(cell("th", "Area"));
  for (const p of pollutants) {
    const th = cell("th", LABELS[p] || p);
    th.colSpan = 3;
    th.scope = "colgroup";
    top.append(th);
    sub.append(cell("th", "annual mean µg/m³"), cell("th", "days above 24 h"), cell("th", "complete"));
  }
  $("report-head").replaceChildren(top, sub);
}

function row(area, pollutants) {
  const tr = document.createElement("tr");
  tr.dataset.district = area.district ?? "";
  const name = cell("th", area.name);
  name.scope = "row";
  tr.append(name);
  for (const p of pollutants) {
    const f = area.pollutants[p];
    const mean = cell("td", num(f.annual_mean), f.exceeds_annual ? "above" : "");
    mean.dataset.pollutant = p;
    mean.title = `WHO 2021 annual guideline ${f.annual_guideline} µg/m³`;
    const days = cell("td", `${f.days_above}`, f.days_above ? "above" : "");
    days.title = `days whose mean exceeds the 24-hour guideline ${f.daily_guideline} µg/m³`;
    const complete = cell("td", `${num(f.completeness * 100, 0)} %`, f.valid ? "" : "invalid");
    complete.title = `${f.days_with_data} of ${f.days_in_period} days with data`;
    tr.append(mean, days, complete);
  }
  return tr;
}

function episodes(areas, pollutants) {
  const items = [];
  for (const area of areas) {
    for (const p of pollutants) {
      const worst = area.pollutants[p].worst_episodes[0];
      if (!worst) continue;
      const li = document.createElement("li");
      li.dataset.district = area.district ?? "";
      li.dataset.pollutant = p;
      const span = worst.start === worst.end ? worst.start : `${worst.start} – ${worst.end}`;
      li.textContent = `${area.name}, ${LABELS[p] || p}: ${span} (${worst.days} d, peak ${num(worst.peak)} µg/m³ on ${worst.peak_day})`;
      items.push(li);
    }
  }
  if (!items.length) items.push(cell("li", "No day above the 24-hour guidelines."));
  $("report-episodes").replaceChildren(...items);
}

export async function showReport(city, year) {
  const report = await getJson(path(city), { year });
  const areas = report.areas || [];
  const pollutants = Object.keys(areas[0]?.pollutants || {});
  header(pollutants);
  $("report-body").replaceChildren(...areas.map((a) => row(a, pollutants)));
  episodes(areas, pollutants);
  const served = (report.served_by || []).map((s) => s.tier).join(", ");
  $("report-note").textContent = `${report.from.slice(0, 10)} to ${report.to.slice(0, 10)} (UTC days; from ${served || "no data"})`;
}

// Save the report as CSV: fetched with the key, then a Blob link clicked.
export async function downloadReport(city, year) {
  const { blob, name } = await getBlob(path(city), { year, format: "csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}
