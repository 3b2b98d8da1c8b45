// The city map: district polygons and device dots as inline SVG, projected locally
// (equirectangular, scaled by cos(latitude)): no tile server, nothing external.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 1000;
const PAD = 12; // a margin: labels sit inside their districts

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

// Where a line crosses the ring: x values along y = c (or y values along x = c).
function crossings(points, c, axis) {
  const out = [];
  const other = 1 - axis;
  for (let i = 0; i < points.length - 1; i += 1) {
    const a = points[i];
    const b = points[i + 1];
    if ((a[axis] <= c && b[axis] > c) || (b[axis] <= c && a[axis] > c)) {
      const t = (c - a[axis]) / (b[axis] - a[axis]);
      out.push(a[other] + t * (b[other] - a[other]));
    }
  }
  return out.sort((x, y) => x - y);
}

// The stretch of the chord through `at` that lies inside the polygon (even-odd pairs).
function chord(points, c, axis, at) {
  const xs = crossings(points, c, axis);
  let best = null;
  for (let i = 0; i + 1 < xs.length; i += 2) {
    const span = [xs[i], xs[i + 1]];
    if (span[0] <= at && at <= span[1]) return span;
    if (!best || span[1] - span[0] > best[1] - best[0]) best = span;
  }
  return best;
}

const MIN_LABEL = 9; // px of the viewBox at unit 1: smaller reads as noise

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
      const label = svg("text", { class: "label", "dominant-baseline": "central" }, labels);
      label.textContent = feature.properties.name;
      this.fitLabel(label, path, ring.map((p) => this.project(p)));
      this.districts.set(feature.id, { path, name: feature.properties.name, label });
    }
    this.update(geo);
  }

  // Put a district's name where the polygon is widest around its centroid, at the
  // largest size (up to the default) whose box lies wholly inside the polygon.
  fitLabel(label, path, points) {
    let [x, y] = centroid(points);
    const across = chord(points, y, 1, x);
    if (across) x = (across[0] + across[1]) / 2;
    const down = chord(points, x, 0, y);
    if (down) y = (down[0] + down[1]) / 2;
    label.setAttribute("x", x.toFixed(1));
    label.setAttribute("y", y.toFixed(1));
    let size = 22 * this.unit;
    label.setAttribute("font-size", size.toFixed(1));
    const width = across ? across[1] - across[0] : size * 4;
    const length = label.getComputedTextLength() || 1;
    size = Math.max(MIN_LABEL * this.unit, Math.min(size, (size * 0.85 * width) / length));
    for (let i = 0; i < 12; i += 1) {
      label.setAttribute("font-size", size.toFixed(1));
      if (this.inside(path, label.getBBox())) return;
      size *= 0.88;
      if (size < MIN_LABEL * this.unit) break;
    }
    label.setAttribute("font-size", (MIN_LABEL * this.unit).toFixed(1));
  }

  inside(path, box) {
    const corners = [
      [box.x, box.y],
      [box.x + box.width, box.y],
      [box.x, box.y + box.height],
      [box.x + box.width, box.y + box.height],
    ];
    return corners.every(([cx, cy]) => path.isPointInFill(new DOMPoint(cx, cy)));
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
