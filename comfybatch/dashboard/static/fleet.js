// @ts-check
// The fleet panel on the home page.
import { api } from "./api.js";
import { $, h } from "./dom.js";
import { rememberServerNames, serverLabel } from "./format.js";

/** The fleet panel: each server's health, ComfyUI queue, slots in use and the last error this dashboard saw. */
export class FleetPanel {
  /** @param {ParentNode} root */
  constructor(root) {
    this.fleetBody = $(root, "fleet").querySelector("tbody");
    this.fleetMessage = $(root, "fleet-message");
  }

  async load() {
    try {
      const { servers } = await api("GET", "/api/servers");
      rememberServerNames(servers);
      this.fleetBody.replaceChildren(...servers.map((server) => {
        const up = server.health === "ok";
        const lastError = server.last_error
          ? `${server.last_error}${server.last_error_at ? ` (${new Date(server.last_error_at).toLocaleTimeString()})` : ""}`
          : "—";
        return h("tr", { testid: "fleet-server", "data-server": server.name },
          h("th", { scope: "row", title: `${server.name} · ${server.url}`, testid: "fleet-name" }, serverLabel(server)),
          h("td", {}, h("span", { class: `badge ${up ? "state-completed" : "state-failed"}`, testid: "fleet-health" },
            up ? "ok" : server.reason || server.health),
            // `comfybatch fleet drain`: no new prompts go there; its prompts in flight finish
            server.draining ? h("span", { class: "badge state-running", testid: "fleet-draining",
              title: "comfybatch fleet undrain puts it back" }, "draining") : null),
          h("td", { testid: "fleet-queue" }, server.queue_depth == null ? "—" : String(server.queue_depth)),
          h("td", { testid: "fleet-slots" }, `${server.in_flight} / ${server.slots}`),
          h("td", { testid: "fleet-error", class: server.last_error ? "bad-text" : "muted" }, lastError));
      }));
      this.fleetMessage.textContent = servers.length ? "" : "No ComfyUI server is configured.";
    } catch (error) {
      this.fleetMessage.textContent = `Could not read the fleet: ${error.message}`;
    }
  }
}
