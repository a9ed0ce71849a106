// @ts-check
// The batch's items: read a page at a time, merged with the stream's, placed in batch order, counted per state
// and per server as each one moves (never a pass over every item).
import { api } from "../api.js";
import { PENDING_ITEM, STATUS_POLL_MS, TERMINAL_ITEM } from "./states.js";

const RANK = { queued: 0, submitted: 1, retrying: 1, running: 2 };
const PAGE = 1000;

/** @typedef {import("./view.js").BatchView} BatchView */

/** Methods of BatchView (view.js mixes them in): BatchItems. */
export class BatchItems {
  /**
   * The page holding the first row in view that is not loaded, else the first page not loaded, else null.
   * @this {BatchView}
   */
  nextPage() {
    const pages = Math.ceil(this.slots.length / PAGE);
    const [from, to] = this.visibleRange();
    for (let page = Math.floor(from / PAGE); page * PAGE < to && page < pages; page += 1) {
      if (!this.pages.has(page)) return page;
    }
    for (let page = 0; page < pages; page += 1) {
      if (!this.pages.has(page)) return page;
    }
    return null;
  }

  /** @this {BatchView} */
  async loadPage(page) {
    const generation = this.generation;
    this.pages.add(page);
    const offset = page * PAGE;
    let body;
    try {
      body = await api("GET", `/api/batches/${this.id}/items?limit=${PAGE}&offset=${offset}`);
    } catch (error) {
      if (generation === this.generation) this.pages.delete(page);
      throw error;
    }
    if (this.disposed || generation !== this.generation) return;
    if (body.planned === false) this.unplanned = true;
    this.setTotal(body.total);
    body.items.forEach((item, i) => this.merge(item, offset + i));
    this.queueRender();
    this.queueSummary();
  }

  /**
   * Load the pages not loaded yet, one at a time, the ones in view first; called again by scrolling.
   * @this {BatchView}
   */
  async loadRest() {
    if (this.loading || this.disposed) return;
    this.loading = true;
    try {
      for (let page = this.nextPage(); page !== null && !this.disposed; page = this.nextPage()) {
        await this.loadPage(page);
        await new Promise((resolve) => setTimeout(resolve, 0)); // let a frame through between pages
      }
    } catch (error) {
      this.message(`Could not load every item (${error.message}); trying again.`);
      this.later(STATUS_POLL_MS, () => {
        this.message("");
        this.loadRest();
      });
    } finally {
      this.loading = false;
    }
  }

  /** The flow has stored its plan: read every page again, in the plan's order (a journal-only page had no order,
   * prompts or seeds). At most once per journal-only read: a batch that never stores a plan is not read per event.
   * @this {BatchView}
   */
  replan() {
    if (!this.unplanned) return;
    this.unplanned = false;
    this.slots = new Array(this.slots.length);
    this.filled = 0;
    for (const item of this.items.values()) item.position = undefined;
    this.reload();
  }

  /**
   * Load every page again (the plan appeared, or the run ended): the pages in view first.
   * @this {BatchView}
   */
  reload() {
    this.generation += 1;
    this.pages.clear();
    this.queueRender();
    this.loadRest();
  }

  /** @this {BatchView} */
  setTotal(total) {
    if (Number.isInteger(total) && total > this.slots.length) {
      this.slots.length = total;
      this.queueRender();
    }
  }

  /**
   * Take a snapshot item's state unless ours is terminal or further along; fill in what the stream lacked.
   * @this {BatchView}
   */
  merge(snapshot, position) {
    let item = this.items.get(snapshot.key);
    if (!item) {
      item = { ...snapshot, progress: null };
      this.items.set(item.key, item);
      this.place(item, position);
      this.track(item, 1);
      return;
    }
    if (item.position !== position) this.place(item, position);
    for (const name of ["index", "prompt", "seed", "values", "file", "media"]) {
      if (item[name] == null && snapshot[name] != null) item[name] = snapshot[name];
    }
    if (!TERMINAL_ITEM.has(item.state)
      && (TERMINAL_ITEM.has(snapshot.state) || RANK[snapshot.state] > RANK[item.state])) {
      this.track(item, -1);
      Object.assign(item, snapshot, { progress: null });
      this.track(item, 1);
    }
    this.touch(item);
  }

  /**
   * Put `item` at `position`. The snapshot's place wins: an item the stream put there first moves to the end.
   * @this {BatchView}
   */
  place(item, position, snapshot = true) {
    if (item.position != null && this.slots[item.position] === item) {
      this.slots[item.position] = undefined;
      this.filled -= 1;
    }
    let at = position ?? this.slots.length;
    const other = this.slots[at];
    if (other && other !== item) {
      if (snapshot) this.place(other, undefined, false);
      else at = this.slots.length;
    }
    this.slots[at] = item;
    this.filled += 1;
    item.position = at;
    this.queueRender();
  }

  /**
   * Add (+1) or take away (-1) an item's share of the per-state and per-server counts.
   * @this {BatchView}
   */
  track(item, sign) {
    this.counts[item.state] = (this.counts[item.state] || 0) + sign;
    if (!item.server) return;
    let lane = this.lanes.get(item.server);
    if (!lane) this.lanes.set(item.server, (lane = { done: 0, failed: 0, busy: 0 }));
    if (item.state === "done" || item.state === "skipped") lane.done += sign;
    else if (item.state === "failed") lane.failed += sign;
    else if (PENDING_ITEM.has(item.state)) lane.busy += sign;
  }
}
