// @ts-check
// The batch list on the home page.
import { api } from "./api.js";
import { $, h } from "./dom.js";
import { duration } from "./format.js";

/** The batch list: filtered by state and name, 50 rows a page. */
export class BatchList {
  /** @param {ParentNode} root */
  constructor(root) {
    this.listBody = $(root, "batch-list").querySelector("tbody");
    this.listMessage = $(root, "list-message");
    this.filters = $(root, "batch-filters");
    this.more = $(root, "more");
    this.offset = 0;
    this.filters.addEventListener("submit", (event) => {
      event.preventDefault();
      this.load(true);
    });
    this.more.addEventListener("click", () => this.load(false));
  }

  async load(reset, { quiet = false } = {}) {
    if (reset) this.offset = 0;
    const params = new URLSearchParams({ limit: "50", offset: String(this.offset) });
    for (const name of ["state", "name"]) {
      const value = this.filters.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    try {
      const { batches } = await api("GET", `/api/batches?${params}`);
      const rows = batches.map((batch) => h("tr", { testid: "batch-row", "data-batch-id": batch.batch_id },
        h("td", {}, h("a", { href: `#/batches/${batch.batch_id}` }, batch.name)),
        h("td", {}, h("span", { class: `badge state-${batch.state.toLowerCase()}` }, batch.state_name || batch.state)),
        h("td", { testid: "batch-progress" }, progressCell(batch.counts)),
        h("td", { testid: "batch-template" }, batch.template || "custom graph"),
        h("td", { testid: "batch-submitter" }, batch.submitted_by || "—"),
        h("td", { testid: "batch-duration" }, duration(batch.duration_s)),
        h("td", {}, batch.created ? new Date(batch.created).toLocaleString() : "")));
      if (reset) this.listBody.replaceChildren(...rows);
      else this.listBody.append(...rows);
      this.offset += batches.length;
      this.more.hidden = batches.length < 50;
      this.listMessage.textContent = this.listBody.children.length ? "" : "No batches yet.";
    } catch (error) {
      if (!quiet) this.listMessage.textContent = `Could not list batches: ${error.message}`;
    }
  }
}

/** A list row's progress: a bar and "done of total" with failures, from the batch's stored counts. */
export function progressCell(counts) {
  if (!counts) return h("span", { class: "muted" }, "—");
  const finished = counts.done + counts.failed + counts.cancelled;
  const total = counts.total;
  const text = [`${counts.done} of ${total ?? "?"} done`, counts.failed && `${counts.failed} failed`,
    counts.cancelled && `${counts.cancelled} not rendered`].filter(Boolean).join(" · ");
  return h("span", { class: "progress-cell" },
    h("progress", { max: Math.max(total ?? finished, 1), value: finished, "aria-label": text }), h("span", {}, text));
}
