// @ts-check
// The batch's status: read every few seconds; the head, the counters, the ETA and the server lanes drawn from it.
import { api } from "../api.js";
import { $, h } from "../dom.js";
import { duration, rememberServerNames, safeHttpUrl, serverName, serverNames } from "../format.js";
import { STATUS_POLL_MS, TERMINAL_RUN, stateTime } from "./states.js";

const SUMMARY_MS = 250;

/** @typedef {import("./view.js").BatchView} BatchView */

/** Methods of BatchView (view.js mixes them in): BatchStatus. */
export class BatchStatus {
  /**
   * The fleet's display names for lanes and cards; without them the page shows server names.
   * @this {BatchView}
   */
  async loadServerNames() {
    try {
      rememberServerNames((await api("GET", "/api/servers")).servers);
    } catch {
      return;
    }
    if (this.disposed) return;
    for (const item of this.mounted.keys()) this.touch(item);
    this.queueSummary();
  }

  /** @this {BatchView} */
  async refreshStatus() {
    const asked = ++this.statusAsked;
    const status = await api("GET", `/api/batches/${this.id}`);
    if (asked < this.statusShown || this.disposed) return;
    this.statusShown = asked;
    // The server may answer from a read a moment old: a state the stream reported since then stays.
    if (this.status && stateTime(this.status) > stateTime(status)) {
      const { state, state_name, state_at } = this.status;
      Object.assign(status, { state, state_name, state_at });
    }
    this.status = status;
    this.etaReadAt = performance.now();
    if (this.status.planned !== false) this.replan();
    this.setTotal(this.status.counts?.total ?? 0);
    this.renderHead();
    this.queueSummary();
  }

  /** @this {BatchView} */
  pollStatus() {
    this.later(STATUS_POLL_MS, async () => {
      try {
        await this.refreshStatus();
      } catch {
        // the stream shows the connection state; the next poll tries again
      }
      if (!this.runEnded()) this.pollStatus();
    });
  }


  /** @this {BatchView} */
  runEnded() {
    return Boolean(this.status && TERMINAL_RUN.has(this.status.state));
  }

  /**
   * Redraw the counters and lanes at most every SUMMARY_MS.
   * @this {BatchView}
   */
  queueSummary() {
    if (this.summaryTimer !== null || this.disposed) return;
    const wait = Math.max(0, this.lastSummary + SUMMARY_MS - performance.now());
    this.summaryTimer = setTimeout(() => requestAnimationFrame(() => {
      this.summaryTimer = null;
      this.lastSummary = performance.now();
      if (!this.disposed) this.renderSummary();
    }), wait);
  }

  /** @this {BatchView} */
  renderHead() {
    const status = this.status;
    if (!status) return;
    $(this.root, "batch-name-title").textContent = status.name;
    document.title = `${status.name} · comfybatch`;
    const badge = $(this.root, "batch-state");
    badge.textContent = status.state_name || status.state;
    badge.dataset.state = status.state;
    badge.className = `badge state-${String(status.state).toLowerCase()}`;
    const who = [status.template ? `template ${status.template}` : "custom graph",
      status.submitted_by && `submitted by ${status.submitted_by}`,
      status.cancelled_by && `cancelled by ${status.cancelled_by}`].filter(Boolean).join(" · ");
    $(this.root, "batch-who").textContent = who;
    const reason = $(this.root, "batch-reason");
    reason.hidden = !status.reason || Boolean(status.cancelled_by);
    reason.textContent = status.reason ? `Why it ended: ${status.reason}` : "";
    reason.classList.toggle("bad", ["FAILED", "CRASHED"].includes(status.state));
    this.renderResume(status);
    const link = $(this.root, "prefect-link");
    const href = status.links && safeHttpUrl(status.links.prefect_ui);
    link.hidden = !href;
    if (href) link.href = href;
    $(this.root, "cancel").disabled = this.runEnded();
    const conn = $(this.root, "conn-status");
    if (conn.dataset.conn === "ended") conn.textContent = this.runEnded() ? "Stream ended" : "Finishing…";
  }

  /**
   * The ETA of the last status read, counted down between reads (every second while the batch runs).
   * @this {BatchView}
   */
  renderEta() {
    const eta = $(this.root, "eta");
    if (this.runEnded()) {
      eta.textContent = this.status.state === "COMPLETED" ? "finished" : "ended";
      return;
    }
    const left = this.status?.eta_s;
    if (left == null || this.etaReadAt == null) {
      eta.textContent = "ETA —";
      return;
    }
    const remaining = left - (performance.now() - this.etaReadAt) / 1000;
    eta.textContent = remaining > 0 ? `ETA ${duration(remaining)}` : "ETA any moment";
    if (!this.etaTicking) { // one ticking timer, however often the summary redraws
      this.etaTicking = true;
      this.later(1000, () => {
        this.etaTicking = false;
        this.renderEta();
      });
    }
  }

  /**
   * Links between a run and the one resuming it; "Retry failed" / "Render the rest" once an ended run left work.
   * @this {BatchView}
   */
  renderResume(status) {
    const note = $(this.root, "batch-resumed");
    const parts = [];
    if (status.resumed_from) {
      parts.push("Resumes ", h("a", { href: `#/batches/${status.resumed_from}`, testid: "resumed-from" }, "an earlier run"),
        " of this batch (its stored images are kept). ");
    }
    if (status.resumed_as) {
      parts.push("Resumed: the batch goes on in ", h("a", { href: `#/batches/${status.resumed_as}`, testid: "resumed-as" },
        "its new run"), ".");
    }
    note.replaceChildren(...parts);
    note.hidden = !parts.length;
    const counts = status.counts || {};
    const open = this.runEnded() && !status.resumed_as;
    const unfinished = counts.total == null ? status.state !== "COMPLETED" : counts.cancelled > 0 || counts.pending > 0;
    $(this.root, "retry-failed").hidden = !(open && counts.failed > 0);
    $(this.root, "render-rest").hidden = !(open && unfinished);
  }

  /**
   * Counts from the items while every item is loaded (live), else from the last status read.
   * @this {BatchView}
   */
  summaryCounts() {
    const total = Math.max(this.status?.counts?.total ?? 0, this.slots.length);
    if (this.filled < total && this.status?.counts) {
      const { done = 0, failed = 0, cancelled = 0 } = this.status.counts;
      const lanes = Object.entries(this.status.servers || {}).map(([name, s]) =>
        [name, { done: s.done, failed: s.failed, busy: s.in_flight }]);
      return { total, done, failed, cancelled, lanes };
    }
    const count = (state) => this.counts[state] || 0;
    const lanes = new Map(Object.keys(this.status?.servers || {}).map((name) => [name, { done: 0, failed: 0, busy: 0 }]));
    for (const [name, lane] of this.lanes) lanes.set(name, lane);
    return { total, done: count("done") + count("skipped"), failed: count("failed"), cancelled: count("cancelled"),
      lanes: [...lanes.entries()] };
  }

  /** @this {BatchView} */
  renderSummary() {
    const { total, done, failed, cancelled, lanes } = this.summaryCounts();
    const ended = this.runEnded();
    const pending = Math.max(0, total - done - failed - cancelled);
    const starting = !ended && total === 0;
    $(this.root, "counts").textContent = starting ? "Starting: planning the batch on the fleet…"
      : `${done} of ${total} done · ${failed} failed · ${pending} pending` + (cancelled ? ` · ${cancelled} cancelled` : "");
    const gridMessage = $(this.root, "grid-message");
    gridMessage.textContent = !this.status ? "Loading the items…"
      : this.slots.length ? "" : ended ? "This batch has no items." : "Items appear once the batch is planned…";
    gridMessage.hidden = !gridMessage.textContent;
    const overall = $(this.root, "overall");
    overall.max = Math.max(total, 1);
    overall.value = done + failed + cancelled;
    this.renderEta();
    const draining = new Set(ended ? [] : this.status?.draining || []);
    const shown = lanes.map(([name, lane]) => [name, lane.done, lane.failed, ended ? 0 : lane.busy, draining.has(name)])
      .sort(([a], [b]) => a.localeCompare(b));
    const key = JSON.stringify([shown, serverNames.size]);
    if (key === this.summaryKey) return;
    this.summaryKey = key;
    const rows = shown.map(([name, laneDone, laneFailed, busy, drained]) =>
      h("li", { testid: "lane", "data-server": name },
        h("span", { class: "lane-name", title: name }, serverName(name)),
        h("span", { class: "lane-bar", "aria-hidden": "true" },
          ...Array.from({ length: Math.min(laneDone, 200) }, () => h("i", { class: "d" })),
          ...Array.from({ length: Math.min(laneFailed, 200) }, () => h("i", { class: "f" })),
          ...Array.from({ length: Math.min(busy, 50) }, () => h("i", { class: "b" }))),
        h("span", {}, h("span", { class: "lane-counts", testid: "lane-counts" },
          `${laneDone} done · ${laneFailed} failed · ${busy} in flight`),
        drained ? h("span", { class: "badge state-running", testid: "lane-draining",
          title: "No new prompts go there; its prompts in flight finish (comfybatch fleet undrain puts it back)" },
        "draining") : null)));
    const none = this.status ? "No item has reached a server yet." : "Loading…";
    $(this.root, "lanes").replaceChildren(...(rows.length ? rows : [h("li", { class: "muted" }, none)]));
  }
}
