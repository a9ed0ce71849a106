// @ts-check
// The grid: only the rows in view are drawn (fixed-height rows, cards recycled), redrawn at the next frame.
import { $, h } from "../dom.js";
import { inputName, itemNumber, mediaKind, serverName } from "../format.js";
import { viewer } from "../viewer.js";
import { PENDING_ITEM } from "./states.js";

const GRID_GAP_PX = 14; // keep in step with .grid-window's gap in style.css
const CARD_MIN_PX = 170;
const CARD_TEXT_PX = 112; // prompt (2 lines), meta and error under the square image
// Narrow screens (a phone): small cards showing the number line only, several to a row, so 16 items are a short page.
const COMPACT_BELOW_PX = 560;
const COMPACT_CARD_MIN_PX = 96;
const COMPACT_TEXT_PX = 28;
const OVERSCAN_ROWS = 2;

/** What a card says of an item's state (`halted`: pending, but the run has ended). */
export function stateLabel(item, halted) {
  if (halted) return "not run: the batch has ended";
  switch (item.state) {
    case "queued": return "queued";
    case "submitted": return item.server ? `submitted to ${serverName(item.server)}` : "submitted";
    case "retrying": return item.attempt ? `retrying (attempt ${item.attempt})` : "retrying";
    case "running":
      return item.progress && item.progress.max > 0 ? `running ${item.progress.value}/${item.progress.max}` : "running";
    default: return item.state;
  }
}


/** @typedef {import("./view.js").BatchView} BatchView */

/** Methods of BatchView (view.js mixes them in): BatchGrid. */
export class BatchGrid {
  /**
   * An item changed: redraw its card at the next frame if it is drawn, and the summary soon.
   * @this {BatchView}
   */
  touch(item) {
    if (this.mounted.has(item)) {
      this.dirty.add(item);
      this.queueRender();
    }
    this.queueSummary();
  }

  /** @this {BatchView} */
  queueRender() {
    if (this.renderQueued || this.disposed) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      if (!this.disposed) this.render();
    });
  }

  /** @this {BatchView} */
  layout() {
    const width = this.grid.clientWidth || CARD_MIN_PX;
    const key = `${width}:${this.slots.length}`;
    if (key === this.layoutKey) return;
    this.layoutKey = key;
    const compact = width < COMPACT_BELOW_PX;
    this.grid.classList.toggle("compact", compact);
    const cardMin = compact ? COMPACT_CARD_MIN_PX : CARD_MIN_PX;
    this.cols = Math.max(1, Math.floor((width + GRID_GAP_PX) / (cardMin + GRID_GAP_PX)));
    const cardWidth = (width - GRID_GAP_PX * (this.cols - 1)) / this.cols;
    this.cardHeight = Math.ceil(cardWidth + (compact ? COMPACT_TEXT_PX : CARD_TEXT_PX));
    this.rowHeight = this.cardHeight + GRID_GAP_PX;
    this.rows = Math.ceil(this.slots.length / this.cols);
    this.grid.style.height = `${Math.max(0, this.rows * this.rowHeight - GRID_GAP_PX)}px`;
    this.window.style.gridTemplateColumns = `repeat(${this.cols}, minmax(0, 1fr))`;
    this.window.style.gridAutoRows = `${this.cardHeight}px`;
  }

  /**
   * Positions [from, to) of the rows in view plus a margin.
   * @this {BatchView}
   */
  visibleRange() {
    this.layout();
    const top = this.grid.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / this.rowHeight) - OVERSCAN_ROWS);
    const last = Math.min(this.rows, Math.ceil((window.innerHeight - top) / this.rowHeight) + OVERSCAN_ROWS);
    return [Math.min(first, last) * this.cols, Math.min(this.slots.length, last * this.cols)];
  }

  /** @this {BatchView} */
  render() {
    const [from, to] = this.visibleRange();
    this.window.style.transform = `translateY(${Math.floor(from / this.cols) * this.rowHeight}px)`;
    const mounted = new Map();
    const cards = [];
    let missing = false;
    for (let position = from; position < to; position += 1) {
      const item = this.slots[position];
      if (!item) {
        missing = true;
        cards.push(h("div", { class: "card placeholder", "aria-hidden": "true" }));
        continue;
      }
      let card = this.mounted.get(item);
      item.visible = true;
      if (!card) {
        card = h("article", { class: "card", testid: "item", "data-key": item.key });
        this.drawCard(item, card);
      } else if (this.dirty.has(item)) {
        this.drawCard(item, card);
      }
      mounted.set(item, card);
      cards.push(card);
    }
    for (const item of this.mounted.keys()) if (!mounted.has(item)) item.visible = false;
    this.mounted = mounted;
    this.dirty.clear();
    const shown = this.window.children;
    if (shown.length !== cards.length || cards.some((card, i) => shown[i] !== card)) this.window.replaceChildren(...cards);
    if (!this.painted && mounted.size) {
      this.painted = true;
      performance.mark("comfybatch:first-items"); // read by the browser test: time to the first screen
    }
    if (missing) this.loadRest();
  }

  /** @this {BatchView} */
  drawCard(item, card) {
    const halted = PENDING_ITEM.has(item.state) && this.runEnded() && $(this.root, "conn-status").dataset.conn === "ended";
    card.dataset.state = halted ? "halted" : item.state;
    card.className = `card state-${card.dataset.state}`;
    const number = itemNumber(item);
    card.setAttribute("aria-label", `Item ${number}: ${stateLabel(item, halted)}`);
    const parts = [
      this.media(item, halted),
      h("p", { class: "prompt", testid: "item-prompt", title: item.prompt || "" }, item.prompt || "(no prompt)"),
      h("p", { class: "meta" }, [number, inputName(item), item.seed != null && `seed ${item.seed}`,
        serverName(item.server)].filter(Boolean).join(" · ")),
    ];
    if (item.state === "failed" || item.state === "cancelled") {
      parts.push(h("p", { class: "error", testid: "item-error", title: item.error || "" }, item.error || item.state));
    }
    card.replaceChildren(...parts);
  }

  /** @this {BatchView} */
  media(item, halted) {
    if (halted) return h("div", { class: "media" }, h("span", { class: "note" }, stateLabel(item, true)));
    if (PENDING_ITEM.has(item.state)) {
      const label = stateLabel(item, false);
      const parts = [h("div", { class: "spinner", testid: "spinner", role: "status", "aria-label": label }),
        h("span", { class: "note" }, label)];
      if (item.state === "running" && item.progress && item.progress.max > 0) {
        parts.push(h("progress", { testid: "progress", max: item.progress.max, value: item.progress.value,
          "aria-label": "Sampling progress" }));
      }
      return h("div", { class: "media" }, parts);
    }
    if (item.state === "failed") return h("div", { class: "media failed" }, h("span", { class: "icon", "aria-hidden": "true" }, "✕"));
    if (item.state === "cancelled") {
      return h("div", { class: "media cancelled" }, h("span", { class: "note" }, "not rendered: the batch ended first"));
    }
    if (!item.image) return h("div", { class: "media" }, h("span", { class: "note" }, `${item.state}, no output file`));
    const kind = mediaKind(item);
    if (kind !== "image") { // no thumbnail of a video or a sound: the viewer plays it
      return h("div", { class: "media" }, h("button", { type: "button", class: "thumb-button play", testid: "open-viewer",
        "data-media": kind, "aria-label": `Play ${itemNumber(item)} (${kind})`, onclick: () => viewer.open(this, item) },
      h("span", { class: "play-icon", "aria-hidden": "true" }, "▶"), h("span", { class: "note" }, `${kind} · play`)));
    }
    if (item.thumb) {
      return h("div", { class: "media" }, h("button", { type: "button", class: "thumb-button", testid: "open-viewer",
        "aria-label": `Open ${itemNumber(item)} full size`, onclick: () => viewer.open(this, item) },
      h("img", { testid: "thumb", src: item.thumb, alt: item.prompt || "output image" })));
    }
    if (item.thumbFailed) {
      return h("div", { class: "media" }, h("button", { type: "button", class: "link", onclick: () => {
        item.thumbFailed = false;
        this.touch(item);
      } }, "Image unavailable: retry"));
    }
    this.thumbs.wantThumb(item);
    return h("div", { class: "media loading", "aria-label": "loading image" });
  }

}
