// The city map: district polygons and device dots as inline SVG, projected locally
// (equirectangular, scaled by cos(latitude)): no tile server, nothing external.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 1000;
const PAD = 40; // room for labels of districts on the edge

export function svg(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

// US EPA AQI categories, as CSS classes (colours live in the style sheet).
const AQI_BANDS = [
  [50, "aqi-good", "Good"],
  [100, "aqi-moderate", "Moderate"],
  [150, "aqi-usg", "Unhealthy for Sensitive Groups"],
  [200, "aqi-unhealthy", "Unhealthy"],
  [300, "aqi-very", "Very Unhealthy"],
  [Infinity, "aqi-hazardous", "Hazardous"],
];

export function aqiBand(value) {
  if (value === null || value === undefined) return ["aqi-none", "no data"];
  const band = AQI_BANDS.find(([top]) => value <= top);
  return [band[1], band[2]];
}

function centroid(ring) {
  let area = 0;
  let cx = 0;
  let cy = 0;
  for (let i = 0; i < ring.length - 1; i += 1) {
    const [x0, y0] = ring[i];
    const [x1, y1] = ring[i + 1];
    const cross = x0 * y1 - x1 * y0;
    area += cross;
    cx += (x0 + x1) * cross;
    cy += (y0 + y1) * cross;
  }
  if (Math.abs(area) < 1e-12) return ring[0];
  return [cx / (3 * area), cy / (3 * area)];
}

export class CityMap {
  constructor(root, onSelect) {
    this.root = root;
    this.onSelect = onSelect;
    this.districts = new Map(); // id -> {path, name}
    this.devices = new Map(); // id -> circle
    this.selected = null;
    this.project = null;
  }

  // Fit the projection to the district polygons; drawn once, then only restyled.
  draw(geo) {
    const rings = geo.features.map((f) => f.geometry.coordinates[0]);
    const points = rings.flat();
    const lons = points.map((p) => p[0]);
    const lats = points.map((p) => p[1]);
    const [minLon, maxLon] = [Math.min(...lons), Math.max(...lons)];
    const [minLat, maxLat] = [Math.min(...lats), Math.max(...lats)];
    const kx = Math.cos((((minLat + maxLat) / 2) * Math.PI) / 180);
    const scale = (WIDTH - 2 * PAD) / ((maxLon - minLon) * kx);
    const height = Math.ceil((maxLat - minLat) * scale + 2 * PAD);
    this.project = ([lon, lat]) => [
      PAD + (lon - minLon) * kx * scale,
      PAD + (maxLat - lat) * scale,
    ];
    this.root.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
    // Label and dot sizes follow the map's longer side, so they read the same at any shape.
    this.unit = Math.max(WIDTH, height) / 1000;
    this.root.replaceChildren();
    const areas = svg("g", { class: "districts" }, this.root);
    const labels = svg("g", { class: "labels", "aria-hidden": "true" }, this.root);
    this.dots = svg("g", { class: "devices", "aria-hidden": "true" }, this.root);
    this.districts.clear();
    this.devices.clear();
    for (const feature of geo.features) {
      const ring = feature.geometry.coordinates[0];
      const d = `M${ring.map((p) => this.project(p).map((v) => v.toFixed(1)).join(",")).join("L")}Z`;
      const path = svg("path", { d, class: "district aqi-none", tabindex: 0, role: "button", "aria-pressed": "false" }, areas);
      path.dataset.id = feature.id;
      path.addEventListener("click", () => this.onSelect(feature.id));
      path.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          this.onSelect(feature.id);
        }
      });
      const [x, y] = this.project(centroid(ring));
      const label = svg("text", { x: x.toFixed(1), y: y.toFixed(1), class: "label", "font-size": (22 * this.unit).toFixed(1) }, labels);
      label.textContent = feature.properties.name;
      this.districts.set(feature.id, { path, name: feature.properties.name });
    }
    this.update(geo);
  }

  // Colour each district by its AQI and say so in its accessible name.
  update(geo) {
    for (const feature of geo.features) {
      const entry = this.districts.get(feature.id);
      if (!entry) continue;
      const props = feature.properties;
      const [cls, category] = aqiBand(props.aqi);
      const aqi = props.aqi === null || props.aqi === undefined ? "no AQI" : `AQI ${Math.round(props.aqi)}`;
      entry.path.setAttribute("class", `district ${cls}${this.selected === feature.id ? " selected" : ""}`);
      entry.path.setAttribute(
        "aria-label",
        `${entry.name}: ${aqi}, ${category}; ${props.devices_online ?? 0} devices online, ` +
          `${props.incidents ?? 0} incidents. Open district overview`,
      );
    }
  }

  // Devices with their status (online, stale, offline) at their registry location.
  setDevices(devices) {
    for (const device of devices) {
      let dot = this.devices.get(device.id);
      if (!dot) {
        const [x, y] = this.project([device.location.lon, device.location.lat]);
        dot = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: (6 * this.unit).toFixed(1) }, this.dots);
        svg("title", {}, dot);
        this.devices.set(device.id, dot);
      }
      dot.dataset.kind = device.kind;
      this.setStatus(device.id, device.status);
    }
  }

  setStatus(id, status) {
    const dot = this.devices.get(id);
    if (!dot) return;
    dot.setAttribute("class", `device ${status}`);
    dot.firstChild.textContent = `${id} (${dot.dataset.kind}): ${status}`;
  }

  // A reading just arrived: the device is online now; flash it briefly.
  pulse(id) {
    const dot = this.devices.get(id);
    if (!dot) return;
    this.setStatus(id, "online");
    dot.classList.add("pulse");
    window.setTimeout(() => dot.classList.remove("pulse"), 800);
  }

  select(id) {
    this.selected = id;
    for (const [key, entry] of this.districts) {
      entry.path.classList.toggle("selected", key === id);
      entry.path.setAttribute("aria-pressed", String(key === id));
    }
  }

  name(id) {
    return this.districts.get(id)?.name ?? id;
  }
}
