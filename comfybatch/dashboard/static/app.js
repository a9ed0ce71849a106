// comfybatch dashboard: submit batches and watch them render. Vanilla JS, no build step.
// Data from the server is only ever put into the page as text (textContent, text nodes, attributes).
"use strict";

const KEY_STORE = "comfybatch.apiKey";
const TERMINAL_ITEM = new Set(["done", "failed", "skipped", "cancelled"]);
const PENDING_ITEM = new Set(["queued", "submitted", "retrying", "running"]);
const TERMINAL_RUN = new Set(["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]);
const RANK = { queued: 0, submitted: 1, retrying: 1, running: 2 };
const PAGE = 1000;
const STATUS_POLL_MS = 5000;
const THUMB_WORKERS = 4;

// ---- DOM ----

/** Create an element; string children become text nodes, never markup. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "testid") el.dataset.testid = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

const $ = (root, testid) => root.querySelector(`[data-testid="${testid}"]`);

function fromTemplate(id) {
  return document.getElementById(id).content.cloneNode(true);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function safeHttpUrl(value) {
  try {
    const url = new URL(value, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// ---- API ----

class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }

  /** Problems as `{field, row, column, message}`: 400 `problems`, 422 `detail` list, or the plain detail. */
  get problems() {
    const body = this.body || {};
    if (Array.isArray(body.problems) && body.problems.length) return body.problems;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => ({ field: fieldOf(d.loc), message: String(d.msg ?? d) }));
    }
    return [{ field: null, message: this.message }];
  }
}

function fieldOf(loc) {
  const parts = (Array.isArray(loc) ? loc : []).filter((part) => part !== "body");
  return parts.length ? parts.join(".") : null;
}

function describe(status, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${fieldOf(d.loc) ?? "request"}: ${d.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

const apiKey = () => localStorage.getItem(KEY_STORE) || "";

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** One API call; JSON in and out unless `raw`. Throws ApiError (status 0 for network failures). */
async function api(method, path, { json, body, headers, raw } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, null, `cannot reach the dashboard (${error.message})`);
  }
  if (!response.ok) {
    let detail = null;
    try {
      detail = await response.json();
    } catch {
      detail = null;
    }
    if (response.status === 401) askForKey(apiKey() ? "The saved API key was refused." : "This server needs an API key.");
    throw new ApiError(response.status, detail, describe(response.status, detail));
  }
  return raw ? response : response.json();
}

// ---- API key ----

function askForKey(reason) {
  const panel = document.getElementById("key-panel");
  document.getElementById("key-reason").textContent = reason;
  panel.hidden = false;
  document.getElementById("key-input").focus();
}

function setUpKeyPanel() {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    const key = input.value.trim();
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
    input.value = "";
    document.getElementById("key-panel").hidden = true;
    route();
  });
  document.getElementById("change-key").addEventListener("click", () => askForKey("Enter the key to use."));
}

// ---- Router ----

let current = null;

function route() {
  current?.dispose();
  const main = document.getElementById("main");
  main.replaceChildren();
  const match = location.hash.match(/^#\/batches\/([0-9a-fA-F-]{36})$/);
  current = match ? new BatchView(main, match[1]) : new HomeView(main);
}

// ---- Home: submit form and batch list ----

class HomeView {
  constructor(root) {
    root.append(fromTemplate("home-template"));
    this.form = root.querySelector(".submit-form");
    this.report = $(root, "validation");
    this.listBody = $(root, "batch-list").querySelector("tbody");
    this.listMessage = $(root, "list-message");
    this.filters = $(root, "batch-filters");
    this.more = $(root, "more");
    this.offset = 0;
    this.uploaded = null; // {file, uri}: a sheet is uploaded once for Check and Submit
    this.busy = false;
    this.form.elements.name.placeholder = defaultName();
    $(root, "check").addEventListener("click", () => this.check());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.filters.addEventListener("submit", (event) => {
      event.preventDefault();
      this.loadList(true);
    });
    this.more.addEventListener("click", () => this.loadList(false));
    this.timer = setInterval(() => this.loadList(true, { quiet: true }), 10000);
    this.loadTemplates();
    this.loadList(true);
  }

  dispose() {
    clearInterval(this.timer);
  }

  async loadTemplates() {
    const select = this.form.elements.workflow;
    try {
      const { workflows } = await api("GET", "/api/workflows");
      select.replaceChildren(...workflows.map((name) => h("option", { value: name }, name)));
      if (workflows.includes("txt2img-tiny")) select.value = "txt2img-tiny";
    } catch (error) {
      this.showProblems([{ message: `templates: ${error.message}` }]);
    }
  }

  async spec() {
    const value = (name) => this.form.elements[name].value.trim();
    const spec = {
      name: value("name") || this.form.elements.name.placeholder,
      workflow: value("workflow"),
      prompts: value("prompts").split(/\r?\n/).map((line) => line.trim()).filter(Boolean),
      images_per_item: Number(value("images_per_item") || 1),
      seed_policy: value("seed_policy"),
      base_seed: Number(value("base_seed") || 0),
    };
    const defaults = {};
    for (const name of ["width", "height", "steps"]) {
      if (value(name) !== "") defaults[name] = Number(value(name));
    }
    if (Object.keys(defaults).length) spec.defaults = defaults;
    const file = this.form.elements.sheet.files[0];
    if (file) spec.sheet = await this.upload(file);
    return spec;
  }

  async upload(file) {
    if (this.uploaded?.file === file) return this.uploaded.uri;
    const name = file.name.replace(/[^A-Za-z0-9._ -]/g, "_").replace(/^[^A-Za-z0-9]+/, "sheet");
    const type = /\.csv$/i.test(name) ? "text/csv" : "application/octet-stream";
    const stored = await api("PUT", `/api/uploads/${encodeURIComponent(name)}`, {
      body: file,
      headers: { "Content-Type": type },
    });
    this.uploaded = { file, uri: stored.sheet };
    return stored.sheet;
  }

  async run(label, action) {
    if (this.busy) return;
    this.busy = true;
    this.form.setAttribute("aria-busy", "true");
    this.report.replaceChildren(h("p", { class: "muted" }, label));
    try {
      await action();
    } catch (error) {
      this.showProblems(error instanceof ApiError ? error.problems : [{ message: String(error) }]);
    } finally {
      this.busy = false;
      this.form.removeAttribute("aria-busy");
    }
  }

  check() {
    return this.run("Checking against the fleet…", async () => {
      const report = await api("POST", "/api/validate", { json: await this.spec() });
      this.showReport(report);
    });
  }

  submit() {
    return this.run("Submitting…", async () => {
      const started = await api("POST", "/api/batches", {
        json: await this.spec(),
        headers: { "Idempotency-Key": randomKey() },
      });
      location.hash = `#/batches/${started.batch_id}`;
    });
  }

  showProblems(problems) {
    const list = h("ul", { class: "problems" }, problems.map((p) => {
      const where = [p.field, p.row != null && `row ${p.row}`, p.column && `column ${p.column}`].filter(Boolean);
      return h("li", { testid: "problem" }, where.length ? h("strong", {}, `${where.join(", ")}: `) : null, p.message);
    }));
    this.report.replaceChildren(h("p", { class: "bad", role: "alert" }, "Not submitted — fix these first:"), list);
  }

  showReport(report) {
    const servers = Object.entries(report.per_server).map(([name, n]) => `${name}: ${n}`).join(", ") || "none";
    const parts = [
      h("p", { class: report.ok ? "good" : "bad", testid: "validation-summary" },
        report.ok ? "✓ Ready: " : "✗ Not runnable: ",
        `${report.total} image(s), ${report.duplicates} duplicate(s); servers — ${servers}; `
        + `estimate ${duration(report.estimate_s)}`),
    ];
    if (report.invalid.length) {
      parts.push(h("ul", { class: "problems" }, report.invalid.map((item) =>
        h("li", { testid: "problem" }, h("strong", {}, `item ${item.index ?? item.key}: `), item.error))));
    }
    if (report.plan.length) parts.push(h("pre", { class: "plan" }, report.plan.join("\n")));
    this.report.replaceChildren(...parts);
  }

  async loadList(reset, { quiet = false } = {}) {
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

function defaultName() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `batch-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-`
    + `${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
}

function randomKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- Batch view ----

class BatchView {
  constructor(root, batchId) {
    root.append(fromTemplate("batch-template"));
    this.root = root;
    this.id = batchId;
    this.items = new Map(); // key -> {key, index, prompt, seed, state, server, error, files, image, progress, ...}
    this.grid = $(root, "grid");
    this.status = null;
    this.lastSeq = 0;
    this.lastIndex = -Infinity;
    this.attempt = 0;
    this.socket = null;
    this.reconnectTimer = null;
    this.disposed = false;
    this.timers = new Set();
    this.objectUrls = [];
    this.thumbQueue = [];
    this.thumbWorkers = 0;
    this.summaryQueued = false;
    this.observer = new IntersectionObserver((entries) => this.onVisible(entries), { rootMargin: "200px" });
    $(root, "cancel").addEventListener("click", () => this.cancel());
    $(root, "manifest-csv").addEventListener("click", () => this.download("csv"));
    $(root, "manifest-parquet").addEventListener("click", () => this.download("parquet"));
    this.onOnline = () => this.reconnectNow();
    window.addEventListener("online", this.onOnline);
    this.start();
  }

  dispose() {
    this.disposed = true;
    for (const timer of this.timers) clearTimeout(timer);
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.socket?.close(1000, "page left");
    this.observer.disconnect();
    window.removeEventListener("online", this.onOnline);
    for (const url of this.objectUrls) URL.revokeObjectURL(url);
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
      await this.loadItems();
    } catch (error) {
      this.message(error.status === 404 ? "No such batch." : `Could not load the batch: ${error.message}`);
      if (error.status !== 404) this.later(STATUS_POLL_MS, () => this.start());
      return;
    }
    this.connect(); // from event 1: replayed events only move items forward (see applyItem)
    this.pollStatus();
  }

  // -- server state --

  async refreshStatus() {
    this.status = await api("GET", `/api/batches/${this.id}`);
    this.renderHead();
    this.queueSummary();
  }

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

  async loadItems() {
    for (let offset = 0; ; offset += PAGE) {
      const page = await api("GET", `/api/batches/${this.id}/items?limit=${PAGE}&offset=${offset}`);
      for (const item of page.items) this.merge(item);
      if (offset + PAGE >= page.total || !page.items.length) break;
    }
  }

  /** Take a snapshot item's state unless ours is terminal or further along. */
  merge(snapshot) {
    const item = this.items.get(snapshot.key);
    if (!item) {
      this.addItem({ ...snapshot, progress: null });
      return;
    }
    if (TERMINAL_ITEM.has(item.state)) return;
    if (TERMINAL_ITEM.has(snapshot.state) || RANK[snapshot.state] > RANK[item.state]) {
      Object.assign(item, snapshot, { progress: null });
      this.renderItem(item);
    }
  }

  runEnded() {
    return Boolean(this.status && TERMINAL_RUN.has(this.status.state));
  }

  // -- event stream --

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
        this.setConnection("ended", "Stream ended");
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

  scheduleReconnect() {
    const delay = Math.min(30000, 500 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt += 1;
    this.setConnection("reconnecting", `Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s`);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  /** Back online: do not sit out the back-off. */
  reconnectNow() {
    if (this.reconnectTimer === null || this.disposed) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.connect();
  }

  setConnection(state, text) {
    const el = $(this.root, "conn-status");
    el.dataset.conn = state;
    el.textContent = text;
  }

  /** The stream closed after the run's end: take the final snapshot, then stop spinners that will never finish. */
  async finish() {
    try {
      await this.refreshStatus();
      await this.loadItems();
    } catch {
      return;
    }
    if (!this.runEnded()) return;
    for (const item of this.items.values()) {
      if (PENDING_ITEM.has(item.state)) this.renderItem(item);
    }
  }

  apply(message) {
    if (typeof message.seq !== "number" || message.seq <= this.lastSeq) return;
    this.lastSeq = message.seq;
    const type = String(message.type || "");
    if (type.startsWith("item.")) {
      this.applyItem(type.slice(5), message);
    } else if (type.startsWith("run.")) {
      if (this.status) Object.assign(this.status, { state: message.state, state_name: message.state_name });
      this.renderHead();
      if (this.runEnded()) this.refreshStatus().catch(() => {});
    } else if (type === "batch.cancel-requested") {
      this.message(`Cancel requested${message.by ? ` by ${message.by}` : ""}.`);
    } else if (type === "batch.started" || type === "batch.finished") {
      this.refreshStatus().catch(() => {});
    }
  }

  /** Terminal states stick: a late or replayed event never moves a done, failed or skipped item. */
  applyItem(state, message) {
    let item = this.items.get(message.key);
    if (!item) item = this.addItem({ key: message.key, index: message.index, state: "queued", files: 0 });
    if (TERMINAL_ITEM.has(item.state)) return;
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
      item.state = state;
      item.files = Array.isArray(message.files) ? message.files.length : 0;
      item.image = item.files ? `/api/batches/${this.id}/items/${encodeURIComponent(item.key)}/image` : null;
    } else if (state === "failed") {
      item.state = "failed";
      item.error = message.error || "failed";
    } else {
      return;
    }
    this.renderItem(item);
  }

  // -- rendering --

  addItem(item) {
    item.card = h("article", { class: "card", testid: "item", "data-key": item.key });
    const position = item.index ?? Infinity;
    // Items arrive in index order from the snapshot; only stream-discovered ones need a search.
    const after = position >= this.lastIndex ? null
      : [...this.items.values()].find((other) => (other.index ?? Infinity) > position);
    this.lastIndex = Math.max(this.lastIndex, position);
    this.items.set(item.key, item);
    this.grid.insertBefore(item.card, after ? after.card : null);
    this.observer.observe(item.card);
    this.renderItem(item);
    return item;
  }

  renderItem(item) {
    const halted = PENDING_ITEM.has(item.state) && this.runEnded() && $(this.root, "conn-status").dataset.conn === "ended";
    const card = item.card;
    card.dataset.state = halted ? "halted" : item.state;
    card.className = `card state-${card.dataset.state}`;
    const number = item.index != null ? `#${item.index + 1}` : item.key.slice(0, 8);
    card.setAttribute("aria-label", `Item ${number}: ${stateLabel(item, halted)}`);
    const parts = [
      this.media(item, halted),
      h("p", { class: "prompt", testid: "item-prompt", title: item.prompt || "" }, item.prompt || "(no prompt)"),
      h("p", { class: "meta" }, [number, item.seed != null && `seed ${item.seed}`, item.server].filter(Boolean).join(" · ")),
    ];
    if (item.state === "failed" || item.state === "cancelled") {
      parts.push(h("p", { class: "error", testid: "item-error" }, item.error || item.state));
    }
    card.replaceChildren(...parts);
    this.queueSummary();
  }

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
    if (item.state === "cancelled") return h("div", { class: "media" }, h("span", { class: "note" }, "not rendered"));
    if (!item.image) return h("div", { class: "media" }, h("span", { class: "note" }, `${item.state}, no output file`));
    if (item.thumb) {
      return h("div", { class: "media" }, h("img", { testid: "thumb", src: item.thumb, alt: item.prompt || "output image" }));
    }
    if (item.thumbFailed) {
      return h("div", { class: "media" }, h("button", { type: "button", class: "link", onclick: () => {
        item.thumbFailed = false;
        this.renderItem(item);
      } }, "Image unavailable: retry"));
    }
    this.wantThumb(item);
    return h("div", { class: "media loading", "aria-label": "loading image" });
  }

  queueSummary() {
    if (this.summaryQueued) return;
    this.summaryQueued = true;
    requestAnimationFrame(() => {
      this.summaryQueued = false;
      if (!this.disposed) this.renderSummary();
    });
  }

  renderHead() {
    const status = this.status;
    if (!status) return;
    $(this.root, "batch-name-title").textContent = status.name;
    document.title = `${status.name} · comfybatch`;
    const badge = $(this.root, "batch-state");
    badge.textContent = status.state_name || status.state;
    badge.dataset.state = status.state;
    badge.className = `badge state-${String(status.state).toLowerCase()}`;
    const who = [status.submitted_by && `submitted by ${status.submitted_by}`,
      status.cancelled_by && `cancelled by ${status.cancelled_by}`,
      !status.cancelled_by && status.reason].filter(Boolean).join(" · ");
    $(this.root, "batch-who").textContent = who;
    const link = $(this.root, "prefect-link");
    const href = status.links && safeHttpUrl(status.links.prefect_ui);
    link.hidden = !href;
    if (href) link.href = href;
    $(this.root, "cancel").disabled = this.runEnded();
  }

  renderSummary() {
    const items = [...this.items.values()];
    const count = (...states) => items.filter((item) => states.includes(item.state)).length;
    const total = Math.max(this.status?.counts?.total ?? 0, items.length);
    const done = count("done", "skipped");
    const failed = count("failed");
    const pending = total - done - failed;
    $(this.root, "counts").textContent = `${done} of ${total} done · ${failed} failed · ${pending} pending`;
    const overall = $(this.root, "overall");
    overall.max = Math.max(total, 1);
    overall.value = done + failed;
    $(this.root, "eta").textContent = this.runEnded() ? (this.status.state === "COMPLETED" ? "finished" : "ended") : `ETA ${duration(this.status?.eta_s)}`;
    const lanes = new Map();
    for (const name of Object.keys(this.status?.servers || {})) lanes.set(name, { done: 0, failed: 0, busy: 0 });
    for (const item of items) {
      if (!item.server) continue;
      const lane = lanes.get(item.server) || { done: 0, failed: 0, busy: 0 };
      lanes.set(item.server, lane);
      if (item.state === "done" || item.state === "skipped") lane.done += 1;
      else if (item.state === "failed") lane.failed += 1;
      else if (PENDING_ITEM.has(item.state) && !this.runEnded()) lane.busy += 1;
    }
    const rows = [...lanes.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, lane]) =>
      h("li", { testid: "lane", "data-server": name },
        h("span", { class: "lane-name" }, name),
        h("span", { class: "lane-bar", "aria-hidden": "true" },
          ...Array.from({ length: Math.min(lane.done, 200) }, () => h("i", { class: "d" })),
          ...Array.from({ length: Math.min(lane.failed, 200) }, () => h("i", { class: "f" })),
          ...Array.from({ length: Math.min(lane.busy, 50) }, () => h("i", { class: "b" }))),
        h("span", { class: "lane-counts", testid: "lane-counts" },
          `${lane.done} done · ${lane.failed} failed · ${lane.busy} in flight`)));
    $(this.root, "lanes").replaceChildren(...(rows.length ? rows : [h("li", { class: "muted" }, "No item has reached a server yet.")]));
  }

  // -- thumbnails: fetched with the key (an <img src> cannot send headers), a few at a time, visible first --

  onVisible(entries) {
    for (const entry of entries) {
      const item = this.items.get(entry.target.dataset.key);
      if (!item) continue;
      item.visible = entry.isIntersecting;
      if (item.visible && item.image && !item.thumb && !item.thumbFailed) this.wantThumb(item);
    }
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
      this.thumbWorkers += 1;
      this.fetchThumb(item).finally(() => {
        this.thumbWorkers -= 1;
        item.thumbQueued = false;
        if (!this.disposed) {
          this.renderItem(item);
          this.pumpThumbs();
        }
      });
    }
  }

  async fetchThumb(item) {
    for (let attempt = 0; attempt < 4 && !this.disposed; attempt += 1) {
      try {
        const response = await api("GET", `${item.image}?thumb=1`, { raw: true });
        const url = URL.createObjectURL(await response.blob());
        this.objectUrls.push(url);
        item.thumb = url;
        return;
      } catch (error) {
        if (error.status === 401) break;
        await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt));
      }
    }
    item.thumbFailed = true;
  }

  // -- actions --

  async cancel() {
    if (!window.confirm("Cancel this batch? Items not yet rendered will not run.")) return;
    const button = $(this.root, "cancel");
    button.disabled = true;
    try {
      await api("POST", `/api/batches/${this.id}/cancel`);
      this.message("Cancel requested.");
      await this.refreshStatus();
    } catch (error) {
      this.message(`Could not cancel: ${error.message}`);
      button.disabled = this.runEnded();
    }
  }

  async download(format) {
    try {
      const response = await api("GET", `/api/batches/${this.id}/manifest?format=${format}`, { raw: true });
      const disposition = response.headers.get("Content-Disposition") || "";
      const name = disposition.match(/filename="([^"]+)"/)?.[1] || `${this.status?.name || "batch"}-manifest.${format}`;
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", { href: url, download: name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      this.message("");
    } catch (error) {
      this.message(error.status === 404 ? "No manifest yet: it is written when the batch finishes."
        : `Could not download the manifest: ${error.message}`);
    }
  }
}

function stateLabel(item, halted) {
  if (halted) return "not run: the batch has ended";
  switch (item.state) {
    case "queued": return "queued";
    case "submitted": return item.server ? `submitted to ${item.server}` : "submitted";
    case "retrying": return item.attempt ? `retrying (attempt ${item.attempt})` : "retrying";
    case "running":
      return item.progress && item.progress.max > 0 ? `running ${item.progress.value}/${item.progress.max}` : "running";
    default: return item.state;
  }
}

/** `#key=<key>` (the link `comfybatch up` prints): keep the key, then drop it from the address bar and history. */
function takeKeyFromLink() {
  const match = location.hash.match(/^#key=([A-Za-z0-9_-]+)$/);
  if (!match) return;
  localStorage.setItem(KEY_STORE, match[1]);
  history.replaceState(null, "", location.pathname + location.search);
}

takeKeyFromLink();
setUpKeyPanel();
window.addEventListener("hashchange", route);
route();
