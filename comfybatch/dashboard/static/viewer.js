// @ts-check
// The full-size viewer.
import { api } from "./api.js";
import { $, h } from "./dom.js";
import { itemNumber, mediaKind, serverName } from "./format.js";

// ---- Full-size viewer: one <dialog> for the page; ← → step through the batch's images, Esc closes ----

export class Viewer {
  constructor() {
    this.dialog = document.getElementById("viewer");
    this.image = $(this.dialog, "viewer-image");
    // One element per kind of output: an <img> plays animated WebP/PNG, the others get their controls.
    this.players = { image: this.image, video: $(this.dialog, "viewer-video"), audio: $(this.dialog, "viewer-audio") };
    this.status = $(this.dialog, "viewer-message");
    this.params = $(this.dialog, "viewer-params");
    this.view = null;
    this.item = null;
    this.url = null;
    this.token = 0;
    $(this.dialog, "viewer-prev").addEventListener("click", () => this.step(-1));
    $(this.dialog, "viewer-next").addEventListener("click", () => this.step(1));
    $(this.dialog, "viewer-close").addEventListener("click", () => this.close());
    // On the document: a step may disable the button holding focus, which moves focus out of the dialog.
    document.addEventListener("keydown", (event) => {
      if (!this.dialog.open) return;
      if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        event.preventDefault();
        this.step(event.key === "ArrowRight" ? 1 : -1);
      }
    });
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.close(); // the backdrop
    });
    this.dialog.addEventListener("close", () => this.cleared());
  }

  open(view, item) {
    this.view = view;
    if (!this.dialog.open) this.dialog.showModal();
    this.show(item);
  }

  close() {
    if (this.dialog.open) this.dialog.close();
    else this.cleared();
  }

  cleared() {
    this.token += 1;
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
    this.stopPlayers();
    this.view = null; // the dialog gives focus back to the thumbnail that opened it
    this.item = null;
  }

  step(direction) {
    const next = this.item && this.view?.neighbour(this.item, direction);
    if (next) this.show(next);
  }

  async show(item) {
    const token = ++this.token;
    this.item = item;
    const total = this.view.slots.length;
    $(this.dialog, "viewer-number").textContent = `${itemNumber(item)} of ${total}`;
    $(this.dialog, "viewer-prev").disabled = !this.view.neighbour(item, -1);
    $(this.dialog, "viewer-next").disabled = !this.view.neighbour(item, 1);
    this.renderParams(item);
    const kind = mediaKind(item);
    const player = this.players[kind];
    this.stopPlayers();
    if (kind === "image") this.image.alt = item.prompt || `image ${itemNumber(item)}`;
    else player.setAttribute("aria-label", item.prompt || `${kind} ${itemNumber(item)}`);
    this.status.textContent = kind === "image" ? "Loading the full-size image…" : `Loading the ${kind}…`;
    try {
      const response = await api("GET", item.image, { raw: true });
      const blob = await response.blob();
      if (token !== this.token) return;
      if (this.url) URL.revokeObjectURL(this.url);
      this.url = URL.createObjectURL(blob);
      player.src = this.url;
      player.dataset.media = blob.type;
      player.hidden = false;
      this.status.textContent = "";
    } catch (error) {
      if (token === this.token) this.status.textContent = `Could not load the ${kind}: ${error.message}`;
    }
  }

  /** Hide every player, stop what plays and let go of its source. */
  stopPlayers() {
    for (const player of Object.values(this.players)) {
      player.hidden = true;
      if (player.pause) player.pause();
      player.removeAttribute("src");
      delete player.dataset.media;
      if (player.load) player.load();
    }
  }

  renderParams(item) {
    const rows = [["Item", itemNumber(item)], ["Prompt", item.prompt || "(no prompt)"], ["Seed", item.seed],
      ["Server", serverName(item.server)], ["State", item.state], ["File", item.file], ["Media", item.media]];
    for (const [name, value] of Object.entries(item.values || {})) {
      if (name !== "seed") rows.push([name, typeof value === "string" ? value : JSON.stringify(value)]);
    }
    this.params.replaceChildren(...rows.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([name, value]) => [h("dt", {}, name), h("dd", { testid: `param-${name}` }, String(value))]));
  }
}

export const viewer = new Viewer();
