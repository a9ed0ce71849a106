// @ts-check
// A batch may hold 100,000 items: the grid draws only the rows in view (fixed-height rows, cards recycled), items
// arrive a page at a time (the visible page first, the rest in the background), per-state and per-server counts
// change with each item's transition (never a pass over every item), and the summary redraws a few times a second.
import { $, fromTemplate, h } from "../dom.js";
import { viewer } from "../viewer.js";
import { BatchActions } from "./actions.js";
import { BatchGrid } from "./grid.js";
import { BatchItems } from "./items.js";
import { BatchStatus } from "./status.js";
import { STATUS_POLL_MS } from "./states.js";
import { BatchStream } from "./stream.js";
import { ThumbQueue } from "./thumbs.js";

/** One batch: its head, counters, lanes and grid, kept live by its event stream and a status poll. */
export class BatchView {
  /**
   * @param {HTMLElement} root
   * @param {string} batchId
   */
  constructor(root, batchId) {
    root.append(fromTemplate("batch-template"));
    this.root = root;
    this.id = batchId;
    this.items = new Map(); // key -> {key, index, prompt, seed, state, server, error, files, image, progress, ...}
    this.slots = []; // position in the batch -> item; holes are rows not loaded yet
    this.filled = 0; // slots holding an item
    this.pages = new Set(); // page numbers loaded or loading
    this.generation = 0; // bumped to load every page again (the final snapshot)
    this.loading = false;
    this.counts = Object.create(null); // state -> items in it, kept by track()
    this.lanes = new Map(); // server -> {done, failed, busy}, kept by track()
    this.grid = $(root, "grid");
    this.window = h("div", { class: "grid-window" });
    this.grid.append(this.window);
    this.mounted = new Map(); // item -> its card, for the rows drawn now
    this.dirty = new Set();
    this.layoutKey = "";
    this.renderQueued = false;
    this.painted = false;
    this.status = null;
    this.statusAsked = 0; // status reads sent, numbered
    this.statusShown = 0; // the number of the read `status` came from: an older answer arriving later is dropped
    this.lastSeq = 0;
    this.attempt = 0;
    this.socket = null;
    this.reconnectTimer = null;
    this.disposed = false;
    this.timers = new Set();
    this.thumbs = new ThumbQueue(this);
    this.summaryTimer = null;
    this.lastSummary = -Infinity;
    this.summaryKey = "";
    $(root, "cancel").addEventListener("click", () => this.cancel());
    $(root, "manifest-csv").addEventListener("click", () => this.download("csv"));
    $(root, "manifest-parquet").addEventListener("click", () => this.download("parquet"));
    $(root, "archive").addEventListener("click", () => this.downloadArchive());
    for (const testid of ["retry-failed", "render-rest"]) {
      $(root, testid).addEventListener("click", (event) => this.resume(event.currentTarget));
    }
    this.onOnline = () => this.reconnectNow();
    this.onScroll = () => this.queueRender();
    this.resized = new ResizeObserver(() => this.queueRender()); // window resized, a scrollbar came or went
    this.resized.observe(this.grid);
    window.addEventListener("online", this.onOnline);
    window.addEventListener("scroll", this.onScroll, { passive: true });
    window.addEventListener("resize", this.onScroll);
    this.start();
  }

  dispose() {
    this.disposed = true;
    for (const timer of this.timers) clearTimeout(timer);
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    if (this.summaryTimer !== null) clearTimeout(this.summaryTimer);
    this.socket?.close(1000, "page left");
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("scroll", this.onScroll);
    window.removeEventListener("resize", this.onScroll);
    this.resized.disconnect();
    this.thumbs.revokeAll();
    if (viewer.view === this) viewer.close();
  }

  later(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.disposed) fn();
    }, ms);
    this.timers.add(timer);
  }

  message(text) {
    $(this.root, "batch-message").textContent = text;
  }

  async start() {
    try {
      await this.refreshStatus();
      // A batch that had ended is read once; a running one is read again when its stream ends.
      this.finalSnapshot = this.runEnded();
      // Its events are all in that snapshot: skip them rather than replay a 100,000-item batch's history.
      if (this.finalSnapshot) this.lastSeq = Math.max(0, Number(this.status.events_seq) || 0);
      await this.loadPage(this.nextPage() ?? 0);
    } catch (error) {
      this.message(error.status === 404 ? "No such batch." : `Could not load the batch: ${error.message}`);
      if (error.status !== 404) this.later(STATUS_POLL_MS, () => this.start());
      return;
    }
    this.connect(); // replayed events only move items forward (see applyItem)
    this.loadServerNames();
    this.pollStatus();
    this.loadRest();
  }

  /** The next (+1) or previous (-1) item with an image, in batch order; null at either end. */
  neighbour(item, direction) {
    for (let at = (item.position ?? -1) + direction; at >= 0 && at < this.slots.length; at += direction) {
      const other = this.slots[at];
      if (other?.image) return other;
    }
    return null;
  }
}

// The batch view's methods by concern, each in its module; `this` is the view in all of them.
for (const part of [BatchStatus, BatchItems, BatchStream, BatchGrid, BatchActions]) {
  for (const name of Object.getOwnPropertyNames(part.prototype)) {
    if (name !== "constructor") {
      Object.defineProperty(BatchView.prototype, name, /** @type {PropertyDescriptor} */ (
        Object.getOwnPropertyDescriptor(part.prototype, name)));
    }
  }
}
