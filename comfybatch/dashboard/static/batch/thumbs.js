// @ts-check
// Thumbnails: fetched with the key (an <img src> cannot send headers), a few at a time, drawn cards only.
import { api } from "../api.js";

const THUMB_WORKERS = 4;
const MAX_THUMBS = 600; // object URLs kept; the oldest out of view are let go

/** The thumbnails of one batch view: a queue, a few fetches at a time, and the object URLs kept. */
export class ThumbQueue {
  /** @param {{disposed: boolean, touch: (item: any) => void}} view redraws an item's card once its thumbnail settles */
  constructor(view) {
    this.view = view;
    this.thumbs = new Map(); // item -> object URL, oldest first
    this.thumbQueue = [];
    this.thumbWorkers = 0;
  }

  wantThumb(item) {
    if (!item.visible || item.thumbQueued) return;
    item.thumbQueued = true;
    this.thumbQueue.push(item);
    this.pumpThumbs();
  }

  pumpThumbs() {
    while (this.thumbWorkers < THUMB_WORKERS && this.thumbQueue.length) {
      const item = this.thumbQueue.shift();
      if (!item.visible) {
        item.thumbQueued = false; // scrolled away: asked again when drawn again
        continue;
      }
      this.thumbWorkers += 1;
      this.fetchThumb(item).finally(() => {
        this.thumbWorkers -= 1;
        item.thumbQueued = false;
        if (!this.view.disposed) {
          this.view.touch(item);
          this.pumpThumbs();
        }
      });
    }
  }

  async fetchThumb(item) {
    for (let attempt = 0; attempt < 4 && !this.view.disposed; attempt += 1) {
      try {
        const response = await api("GET", `${item.image}?thumb=1`, { raw: true });
        item.thumb = URL.createObjectURL(await response.blob());
        this.keepThumb(item);
        return;
      } catch (error) {
        if (error.status === 401) break;
        await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt));
      }
    }
    item.thumbFailed = true;
  }

  /** Remember a thumbnail; past MAX_THUMBS, let go of the oldest ones not in view. */
  keepThumb(item) {
    this.thumbs.set(item, item.thumb);
    for (const [old, url] of this.thumbs) {
      if (this.thumbs.size <= MAX_THUMBS) break;
      if (old.visible) continue;
      URL.revokeObjectURL(url);
      this.thumbs.delete(old);
      old.thumb = null;
    }
  }

  /** Let go of every thumbnail kept (the view is left). */
  revokeAll() {
    for (const url of this.thumbs.values()) URL.revokeObjectURL(url);
  }
}
