// @ts-check
// The batch's event stream: one WebSocket, reconnected with back-off, its events applied to the items.
import { apiKey, askForKey } from "../api.js";
import { $ } from "../dom.js";
import { mediaOfFile } from "../format.js";
import { TERMINAL_ITEM, stateTime } from "./states.js";

/** @typedef {import("./view.js").BatchView} BatchView */

/** Methods of BatchView (view.js mixes them in): BatchStream. */
export class BatchStream {
  /** @this {BatchView} */
  connect() {
    if (this.disposed) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/api/batches/${this.id}/events?after=${this.lastSeq}`);
    this.socket = socket;
    this.setConnection("connecting", "Connecting…");
    socket.onopen = () => {
      // Browsers cannot set headers on a WebSocket: the key goes in the first message.
      socket.send(JSON.stringify({ type: "auth", token: apiKey() }));
      this.setConnection("live", "Live");
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.attempt = 0;
      this.apply(message);
    };
    socket.onclose = (event) => {
      if (this.disposed || socket !== this.socket) return;
      if (event.code === 1000) {
        this.finish();
      } else if (event.code === 4401) {
        this.setConnection("unauthorized", "Needs an API key");
        askForKey(apiKey() ? "The saved API key was refused." : "This server needs an API key.");
      } else if (event.code === 4404) {
        this.setConnection("gone", "No such batch");
      } else {
        this.scheduleReconnect();
      }
    };
  }

  /** @this {BatchView} */
  scheduleReconnect() {
    const delay = Math.min(30000, 500 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt += 1;
    this.setConnection("reconnecting", `Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s`);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  /**
   * Back online: do not sit out the back-off.
   * @this {BatchView}
   */
  reconnectNow() {
    if (this.reconnectTimer === null || this.disposed) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.connect();
  }

  /** @this {BatchView} */
  setConnection(state, text) {
    const el = $(this.root, "conn-status");
    el.dataset.conn = state;
    el.textContent = text;
  }

  /** The stream closed after the run's end: take the final snapshot (the pages in view before saying so, the rest
   * after), then stop spinners that will never finish.
   * @this {BatchView}
   */
  async finish() {
    try {
      await this.refreshStatus();
      if (this.runEnded() && !this.finalSnapshot) {
        this.finalSnapshot = true;
        this.generation += 1;
        this.pages.clear();
        const page = this.nextPage();
        if (page !== null) await this.loadPage(page);
      }
    } catch {
      // the snapshot read again later (a poll, a reload) catches up
    } finally {
      this.setConnection("ended", this.runEnded() ? "Stream ended" : "Finishing…");
      if (this.runEnded()) this.loadRest();
      for (const item of this.mounted.keys()) this.touch(item);
    }
  }

  /** @this {BatchView} */
  apply(message) {
    if (typeof message.seq !== "number" || message.seq <= this.lastSeq) return;
    this.lastSeq = message.seq;
    const type = String(message.type || "");
    if (type.startsWith("item.")) {
      this.applyItem(type.slice(5), message);
    } else if (type.startsWith("run.")) {
      const at = { state_at: message.occurred };
      if (this.status && stateTime(at) >= stateTime(this.status)) { // a replayed older state never goes back
        Object.assign(this.status, { state: message.state, state_name: message.state_name, ...at });
      }
      this.renderHead();
      if (this.runEnded()) this.refreshStatus().catch(() => {});
    } else if (type === "batch.cancel-requested") {
      this.message(`Cancel requested${message.by ? ` by ${message.by}` : ""}.`);
    } else if (type === "batch.started" || type === "batch.finished") {
      this.refreshStatus().catch(() => {});
    }
  }

  /**
   * Terminal states stick: a late or replayed event never moves a done, failed, skipped or cancelled item.
   * @this {BatchView}
   */
  applyItem(state, message) {
    if (this.unplanned && !this.planAsked) {
      this.planAsked = true; // the plan is stored before the first prompt: read it now rather than at the next poll
      this.refreshStatus().catch(() => {});
    }
    let item = this.items.get(message.key);
    if (!item) {
      item = { key: message.key, index: message.index ?? null, state: "queued", files: 0, progress: null };
      this.items.set(item.key, item);
      this.place(item, Number.isInteger(message.index) ? message.index : undefined, false);
      this.track(item, 1);
    }
    if (TERMINAL_ITEM.has(item.state)) return;
    if (!["submitted", "retrying", "running", "progress", "done", "skipped", "failed", "cancelled"].includes(state)) return;
    this.track(item, -1);
    if (message.server) item.server = message.server;
    if (state === "submitted" || state === "retrying") {
      item.state = state;
      item.progress = null;
      item.attempt = message.attempt;
    } else if (state === "running") {
      item.state = "running";
    } else if (state === "progress") {
      item.state = "running";
      item.progress = { value: Number(message.value), max: Number(message.max) };
    } else if (state === "done" || state === "skipped") {
      item.state = "done"; // skipped: stored by an earlier run of the batch; the items read says "done" too
      item.files = Array.isArray(message.files) ? message.files.length : 0;
      if (item.files && !item.file) item.file = String(message.files[0]).split("/").pop();
      if (item.file && !item.media) item.media = mediaOfFile(item.file);
      item.image = item.files ? `/api/batches/${this.id}/items/${encodeURIComponent(item.key)}/image` : null;
    } else {
      item.state = state; // failed or cancelled
      item.error = message.error || message.reason || state;
    }
    this.track(item, 1);
    this.touch(item);
  }
}
