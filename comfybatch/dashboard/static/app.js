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

/** The number a person reads for an item: 1-based (`#1` is the first), its key only when the index is unknown. */
function itemNumber(item) {
  return Number.isInteger(item.index) ? `#${item.index + 1}` : String(item.key || "").slice(0, 8);
}

// The media types of what ComfyUI's save nodes write (outputs/manifest.py); the items API says it, an event's file
// name has only its extension.
const MEDIA_TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp", gif: "image/gif",
  webm: "video/webm", mp4: "video/mp4", mov: "video/quicktime", flac: "audio/flac", mp3: "audio/mpeg",
  opus: "audio/ogg", ogg: "audio/ogg", wav: "audio/wav" };

function mediaOfFile(name) {
  const ext = String(name || "").match(/\.([A-Za-z0-9]+)$/)?.[1]?.toLowerCase();
  return MEDIA_TYPES[ext] || null;
}

/** "video", "audio" or "image" (animated WebP/PNG and GIF included: an <img> plays them). */
function mediaKind(item) {
  const media = String(item.media || mediaOfFile(item.file) || "image/png");
  return media.startsWith("video/") ? "video" : media.startsWith("audio/") ? "audio" : "image";
}

/** An image-in item's input as its file was named (an upload's stored name starts with 16 hex digits of its hash). */
function inputName(item) {
  const image = item.values?.image;
  if (typeof image !== "string") return null;
  return image.split(/[\\/]/).pop().replace(/^[0-9a-f]{16}-/, "") || null;
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
    const error = new ApiError(response.status, detail, describe(response.status, detail));
    error.retryAfter = response.headers.get("Retry-After");
    throw error;
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
    this.fleetBody = $(root, "fleet").querySelector("tbody");
    this.fleetMessage = $(root, "fleet-message");
    this.listMessage = $(root, "list-message");
    this.filters = $(root, "batch-filters");
    this.more = $(root, "more");
    this.offset = 0;
    this.uploaded = null; // {file, uri}: a sheet is uploaded once for Check and Submit
    this.uploadedImages = new Map(); // File -> its stored image URIs (a zip: several), uploaded once
    this.busy = false;
    this.form.elements.name.placeholder = defaultName();
    $(root, "check").addEventListener("click", () => this.check());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    // Editing a field marked wrong takes its mark away: the next Check says whether it is right now.
    this.form.addEventListener("input", (event) => clearFieldProblem(event.target));
    this.form.addEventListener("change", (event) => clearFieldProblem(event.target));
    this.filters.addEventListener("submit", (event) => {
      event.preventDefault();
      this.loadList(true);
    });
    this.more.addEventListener("click", () => this.loadList(false));
    this.timer = setInterval(() => {
      this.loadList(true, { quiet: true });
      this.loadFleet();
    }, 10000);
    this.loadTemplates();
    this.loadList(true);
    this.loadFleet();
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
    const images = [...this.form.elements.images.files];
    if (images.length) spec.images = await this.uploadImages(images);
    return spec;
  }

  /** Each chosen image (or zip of images) stored once, in the order chosen; a zip's images in name order. */
  async uploadImages(files) {
    const uris = [];
    for (const [at, file] of files.entries()) {
      if (!this.uploadedImages.has(file)) {
        this.report.replaceChildren(h("p", { class: "muted" }, `Uploading image ${at + 1} of ${files.length}…`));
        const stored = await this.uploadImage(file);
        this.uploadedImages.set(file, stored.images ?? [stored.image]);
      }
      uris.push(...this.uploadedImages.get(file));
    }
    return uris;
  }

  async uploadImage(file) {
    const ext = (file.name.match(/\.([A-Za-z0-9]+)$/)?.[1] || "").toLowerCase();
    const stem = file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._ -]/g, "_").replace(/^[^A-Za-z0-9]+/, "")
      .slice(0, 90) || "image";
    const type = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp", zip: "application/zip" }[ext];
    const sent = `${stem}.${ext}`;
    const refused = (message) => new ApiError(400, { problems: [{ field: "images", message: `${file.name}: ${message}`,
      reason: `${file.name}: ${message}` }] }, message);
    if (!type) throw refused("not a PNG, JPEG, WebP or zip file");
    try {
      return await api("PUT", `/api/uploads/${encodeURIComponent(sent)}`, {
        body: file, headers: { "Content-Type": type },
      });
    } catch (error) {
      throw blamed(error, "images", file.name, sent);
    }
  }

  async upload(file) {
    if (this.uploaded?.file === file) return this.uploaded.uri;
    const name = file.name.replace(/[^A-Za-z0-9._ -]/g, "_").replace(/^[^A-Za-z0-9]+/, "sheet");
    const type = /\.csv$/i.test(name) ? "text/csv" : "application/octet-stream";
    let stored;
    try {
      stored = await api("PUT", `/api/uploads/${encodeURIComponent(name)}`, {
        body: file,
        headers: { "Content-Type": type },
      });
    } catch (error) {
      throw blamed(error, "sheet", file.name, name);
    }
    this.uploaded = { file, uri: stored.sheet };
    return stored.sheet;
  }

  /** `after` is "check" or "submit": only a refused submit says "Not submitted". */
  async run(label, after, action) {
    if (this.busy) return;
    this.busy = true;
    this.form.setAttribute("aria-busy", "true");
    this.report.replaceChildren(h("p", { class: "muted" }, label));
    clearFieldProblems(this.form);
    try {
      await action();
    } catch (error) {
      this.showProblems(error instanceof ApiError ? error.problems : [{ message: String(error) }], after);
    } finally {
      this.busy = false;
      this.form.removeAttribute("aria-busy");
    }
  }

  check() {
    return this.run("Checking against the fleet…", "check", async () => {
      const report = await api("POST", "/api/validate", { json: await this.spec() });
      this.showReport(report);
    });
  }

  /** One Idempotency-Key per submission: kept across retries and re-clicks of the same form, new once it changes. */
  submissionKey(spec) {
    const body = JSON.stringify(spec);
    if (this.submission?.body !== body) this.submission = { body, key: randomKey() };
    return this.submission.key;
  }

  submit() {
    return this.run("Submitting…", "submit", async () => {
      const spec = await this.spec();
      const key = this.submissionKey(spec);
      const started = await retrying(
        () => api("POST", "/api/batches", { json: spec, headers: { "Idempotency-Key": key } }),
        (wait, error) => this.report.replaceChildren(h("p", { class: "muted", testid: "retrying" },
          `${error.status ? "The platform is busy" : "No answer"}; retrying in ${Math.ceil(wait / 1000)} s…`)),
      );
      this.submission = null;
      location.hash = `#/batches/${started.batch_id}`;
    });
  }

  /** The API's problems: each sentence in the list, and beside the form field it points at (when it points at one). */
  showProblems(problems, after = "check") {
    const list = h("ul", { class: "problems" }, problems.map((p) => {
      const control = controlFor(this.form, p);
      if (control) markField(control, p);
      // Sentences carry their place ("prompt 2: …"); an old-style problem without one gets its field in front.
      const where = p.reason === undefined && p.field ? h("strong", {}, `${p.field}: `) : null;
      return h("li", { testid: "problem", "data-field": control?.name ?? null }, where, p.message);
    }));
    const heading = after === "submit" ? "Not submitted — fix these first:" : "Check found problems — fix these before submitting:";
    this.report.replaceChildren(h("p", { class: "bad", role: "alert", testid: "problems-title" }, heading), list);
  }

  showReport(report) {
    const servers = Object.entries(report.per_server).map(([name, n]) => `${serverName(name)}: ${n}`).join(", ") || "none";
    const parts = [
      h("p", { class: report.ok ? "good" : "bad", testid: "validation-summary" },
        report.ok ? "✓ Ready: " : "✗ Not runnable: ",
        `${report.total} image(s), ${report.duplicates} duplicate(s); servers — ${servers}; `
        + `estimate ${duration(report.estimate_s)}`),
    ];
    if (report.invalid.length) {
      parts.push(h("ul", { class: "problems" }, report.invalid.map((item) =>
        h("li", { testid: "problem" }, h("strong", {}, `item ${itemNumber(item)}: `), item.error))));
    }
    if (report.plan.length) {
      // One line per reachable server, and one line for every server that did not answer (the plan words it so).
      parts.push(h("ul", { class: "plan", testid: "plan" }, report.plan.map((line) => {
        const text = line.replace(/^- ([a-z0-9-]+): /, (_, name) => `- ${serverName(name)}: `).replace(/^- /, "");
        const down = /\bnot answer\b/.test(text);
        return h("li", { testid: down ? "unreachable" : "plan-line", class: down ? "bad-text" : null }, text);
      })));
    }
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

  /** The fleet panel: each server's health, ComfyUI queue, slots in use and the last error this dashboard saw. */
  async loadFleet() {
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

// ---- Server display names (from configuration; the name stays the key) ----

const serverNames = new Map(); // name -> display name, from the last /api/servers read

function serverLabel(server) {
  return server.display_name || server.name;
}

function rememberServerNames(servers) {
  for (const server of servers) serverNames.set(server.name, serverLabel(server));
}

/** The name a person reads for server `name`: its display name once the fleet has been read. */
function serverName(name) {
  return (name && serverNames.get(name)) || name;
}

// ---- Problems beside the fields they point at ----

const DEFAULT_FIELDS = new Set(["width", "height", "steps"]);
// A workflow node's input that a form field sets; any other node problem points at the template.
const INPUT_FIELDS = { width: "width", height: "height", steps: "steps", seed: "base_seed", text: "prompts",
  image: "images" };

/** The form control a problem points at (its request field, sheet row/column, or the node input the form sets). */
function controlFor(form, problem) {
  const control = (name) => (name && form.elements[name] instanceof Element ? form.elements[name] : null);
  const field = String(problem.field || "");
  const [root, next] = field.split(/[.[\]]+/);
  if (root === "defaults" && DEFAULT_FIELDS.has(next)) return control(next);
  if (root && root !== "body" && control(root)) return control(root);
  if (problem.row != null || problem.column) return control("sheet");
  if (problem.node) return control(INPUT_FIELDS[problem.input]) || control("workflow");
  return null;
}

/** An upload's refusal as problems of the form field that chose the file (the route itself names its body), each
 * naming the file as the user's computer does (`sentName` is the name it was uploaded under). */
function blamed(error, field, fileName, sentName) {
  if (!(error instanceof ApiError) || error.status === 0 || error.status === 401) return error;
  return new ApiError(error.status, { problems: error.problems.map((p) => {
    const text = String(p.reason || p.message);
    const message = text.includes(sentName) ? text.replaceAll(sentName, fileName)
      : text.includes(fileName) ? text : `${fileName}: ${text}`;
    return { ...p, field, message, reason: message };
  }) }, error.message);
}

/** Mark `control` wrong: aria-invalid, a visible mark on its label, and the sentence under it (read with it). */
function markField(control, problem) {
  const label = control.closest("label");
  control.setAttribute("aria-invalid", "true");
  if (!label) return;
  label.classList.add("invalid");
  let note = label.querySelector(".field-error");
  if (!note) {
    note = h("span", { class: "field-error", id: `${control.name}-error`, testid: "field-error" });
    label.append(note);
    control.setAttribute("aria-describedby", note.id);
  }
  const sentence = problem.reason || problem.message;
  note.textContent = note.textContent ? `${note.textContent}; ${sentence}` : sentence;
}

function clearFieldProblem(control) {
  if (!(control instanceof Element) || !control.hasAttribute("aria-invalid")) return;
  control.removeAttribute("aria-invalid");
  control.removeAttribute("aria-describedby");
  const label = control.closest("label");
  label?.classList.remove("invalid");
  label?.querySelector(".field-error")?.remove();
}

function clearFieldProblems(form) {
  for (const control of form.querySelectorAll("[aria-invalid]")) clearFieldProblem(control);
}

/** A list row's progress: a bar and "done of total" with failures, from the batch's stored counts. */
function progressCell(counts) {
  if (!counts) return h("span", { class: "muted" }, "—");
  const finished = counts.done + counts.failed + counts.cancelled;
  const total = counts.total;
  const text = [`${counts.done} of ${total ?? "?"} done`, counts.failed && `${counts.failed} failed`,
    counts.cancelled && `${counts.cancelled} not rendered`].filter(Boolean).join(" · ");
  return h("span", { class: "progress-cell" },
    h("progress", { max: Math.max(total ?? finished, 1), value: finished, "aria-label": text }), h("span", {}, text));
}

function defaultName() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `batch-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-`
    + `${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
}

const SUBMIT_ATTEMPTS = 5;

/** Call `send()` until it answers: again after a network error or a 503 (after its Retry-After), a few times;
 * `waiting(ms, error)` before each wait. */
async function retrying(send, waiting) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await send();
    } catch (error) {
      const transient = error instanceof ApiError && (error.status === 0 || error.status === 503);
      if (!transient || attempt + 1 >= SUBMIT_ATTEMPTS) throw error;
      const after = Number(error.retryAfter);
      const wait = Number.isFinite(after) && after > 0 ? Math.min(after, 30) * 1000 : Math.min(8000, 500 * 2 ** attempt);
      waiting(wait, error);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

function randomKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- Batch view ----
// A batch may hold 100,000 items: the grid draws only the rows in view (fixed-height rows, cards recycled), items
// arrive a page at a time (the visible page first, the rest in the background), per-state and per-server counts
// change with each item's transition (never a pass over every item), and the summary redraws a few times a second.

const GRID_GAP_PX = 14; // keep in step with .grid-window's gap in style.css
const CARD_MIN_PX = 170;
const CARD_TEXT_PX = 112; // prompt (2 lines), meta and error under the square image
// Narrow screens (a phone): small cards showing the number line only, several to a row, so 16 items are a short page.
const COMPACT_BELOW_PX = 560;
const COMPACT_CARD_MIN_PX = 96;
const COMPACT_TEXT_PX = 28;
const OVERSCAN_ROWS = 2;
const SUMMARY_MS = 250;
const MAX_THUMBS = 600; // object URLs kept; the oldest out of view are let go

class BatchView {
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
    this.lastSeq = 0;
    this.attempt = 0;
    this.socket = null;
    this.reconnectTimer = null;
    this.disposed = false;
    this.timers = new Set();
    this.thumbs = new Map(); // item -> object URL, oldest first
    this.thumbQueue = [];
    this.thumbWorkers = 0;
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
    for (const url of this.thumbs.values()) URL.revokeObjectURL(url);
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

  // -- server state --

  /** The fleet's display names for lanes and cards; without them the page shows server names. */
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

  async refreshStatus() {
    this.status = await api("GET", `/api/batches/${this.id}`);
    this.etaReadAt = performance.now();
    if (this.status.planned !== false) this.replan();
    this.setTotal(this.status.counts?.total ?? 0);
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

  /** The page holding the first row in view that is not loaded, else the first page not loaded, else null. */
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

  /** Load the pages not loaded yet, one at a time, the ones in view first; called again by scrolling. */
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
   * prompts or seeds). At most once per journal-only read: a batch that never stores a plan is not read per event. */
  replan() {
    if (!this.unplanned) return;
    this.unplanned = false;
    this.slots = new Array(this.slots.length);
    this.filled = 0;
    for (const item of this.items.values()) item.position = undefined;
    this.reload();
  }

  /** Load every page again (the plan appeared, or the run ended): the pages in view first. */
  reload() {
    this.generation += 1;
    this.pages.clear();
    this.queueRender();
    this.loadRest();
  }

  setTotal(total) {
    if (Number.isInteger(total) && total > this.slots.length) {
      this.slots.length = total;
      this.queueRender();
    }
  }

  /** Take a snapshot item's state unless ours is terminal or further along; fill in what the stream lacked. */
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

  /** Put `item` at `position`. The snapshot's place wins: an item the stream put there first moves to the end. */
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

  /** Add (+1) or take away (-1) an item's share of the per-state and per-server counts. */
  track(item, sign) {
    this.counts[item.state] = (this.counts[item.state] || 0) + sign;
    if (!item.server) return;
    let lane = this.lanes.get(item.server);
    if (!lane) this.lanes.set(item.server, (lane = { done: 0, failed: 0, busy: 0 }));
    if (item.state === "done" || item.state === "skipped") lane.done += sign;
    else if (item.state === "failed") lane.failed += sign;
    else if (PENDING_ITEM.has(item.state)) lane.busy += sign;
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

  /** The stream closed after the run's end: take the final snapshot (the pages in view before saying so, the rest
   * after), then stop spinners that will never finish. */
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

  /** Terminal states stick: a late or replayed event never moves a done, failed, skipped or cancelled item. */
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

  // -- rendering: only the rows in view --

  /** An item changed: redraw its card at the next frame if it is drawn, and the summary soon. */
  touch(item) {
    if (this.mounted.has(item)) {
      this.dirty.add(item);
      this.queueRender();
    }
    this.queueSummary();
  }

  queueRender() {
    if (this.renderQueued || this.disposed) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      if (!this.disposed) this.render();
    });
  }

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

  /** Positions [from, to) of the rows in view plus a margin. */
  visibleRange() {
    this.layout();
    const top = this.grid.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / this.rowHeight) - OVERSCAN_ROWS);
    const last = Math.min(this.rows, Math.ceil((window.innerHeight - top) / this.rowHeight) + OVERSCAN_ROWS);
    return [Math.min(first, last) * this.cols, Math.min(this.slots.length, last * this.cols)];
  }

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
    this.wantThumb(item);
    return h("div", { class: "media loading", "aria-label": "loading image" });
  }

  /** Redraw the counters and lanes at most every SUMMARY_MS. */
  queueSummary() {
    if (this.summaryTimer !== null || this.disposed) return;
    const wait = Math.max(0, this.lastSummary + SUMMARY_MS - performance.now());
    this.summaryTimer = setTimeout(() => requestAnimationFrame(() => {
      this.summaryTimer = null;
      this.lastSummary = performance.now();
      if (!this.disposed) this.renderSummary();
    }), wait);
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

  /** The ETA of the last status read, counted down between reads (every second while the batch runs). */
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

  /** Links between a run and the one resuming it; "Retry failed" / "Render the rest" once an ended run left work. */
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

  /** Counts from the items while every item is loaded (live), else from the last status read. */
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

  // -- thumbnails: fetched with the key (an <img src> cannot send headers), a few at a time, drawn cards only --

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
        if (!this.disposed) {
          this.touch(item);
          this.pumpThumbs();
        }
      });
    }
  }

  async fetchThumb(item) {
    for (let attempt = 0; attempt < 4 && !this.disposed; attempt += 1) {
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
      await this.save(`/api/batches/${this.id}/manifest?format=${format}`, `${this.status?.name || "batch"}-manifest.${format}`);
      this.message("");
    } catch (error) {
      this.message(error.status === 404 ? "No manifest yet: it is written when the batch finishes."
        : `Could not download the manifest: ${error.message}`);
    }
  }

  async downloadArchive() {
    const button = $(this.root, "archive");
    button.disabled = true;
    this.message("Preparing the zip…");
    try {
      await this.save(`/api/batches/${this.id}/archive.zip`, `${this.status?.name || "batch"}.zip`);
      this.message("");
    } catch (error) {
      this.message(error.status === 404 ? "Nothing to download yet: no image has been stored."
        : `Could not download the zip: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  /** Download `path` with the key (a plain link cannot send it) under the server's file name. */
  async save(path, fallbackName) {
    const response = await api("GET", path, { raw: true });
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = disposition.match(/filename="([^"]+)"/)?.[1] || fallbackName;
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  /** "Retry failed" and "Render the rest": the same batch in a new run, which keeps every stored image. */
  async resume(button) {
    button.disabled = true;
    this.message("Resuming the batch…");
    try {
      const started = await api("POST", `/api/batches/${this.id}/resume`);
      location.hash = `#/batches/${started.batch_id}`;
    } catch (error) {
      this.message(`Could not resume the batch: ${error.message}`);
      button.disabled = false;
    }
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

// ---- Full-size viewer: one <dialog> for the page; ← → step through the batch's images, Esc closes ----

class Viewer {
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

const viewer = new Viewer();

function stateLabel(item, halted) {
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
