// Acting on a district from the console: dim its streetlights or reboot its devices of a
// kind (scope `operate`), then follow the command's status per device until each is final.

import { getJson, postJson } from "./api.js";

const FINAL = new Set(["executed", "failed", "expired"]);
const KINDS = ["streetlight", "cctv", "panic_button", "air_quality", "weather", "noise", "traffic",
  "parking", "crowd", "waste", "device_health", "gunshot", "anpr"];

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

// The "Act on this district" part of the district panel.
export function districtActions(cityId, districtId) {
  const base = `/v1/cities/${encodeURIComponent(cityId)}/districts/${encodeURIComponent(districtId)}/commands`;
  const out = el("p", { id: "cmd-status", className: "window", role: "status" });
  out.setAttribute("aria-live", "polite");
  const list = el("ol", { id: "cmd-deliveries", className: "feed small" });
  const send = async (body) => {
    out.textContent = "sending…";
    try {
      const command = await postJson(base, body);
      await follow(command.id, out, list);
    } catch (err) {
      out.textContent = `refused: ${err.message}`;
    }
  };
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
