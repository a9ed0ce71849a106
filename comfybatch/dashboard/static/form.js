// @ts-check
// The new-batch form: uploads, Check, Submit (retried with one Idempotency-Key), problems beside their fields.
import { api, ApiError } from "./api.js";
import { $, h } from "./dom.js";
import { duration, itemNumber, serverName } from "./format.js";

/** The new-batch form: Check asks the fleet, Submit starts the batch; problems show beside their fields. */
export class SubmitForm {
  /** @param {ParentNode} root */
  constructor(root) {
    this.form = root.querySelector(".submit-form");
    this.report = $(root, "validation");
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
}

// ---- Problems beside the fields they point at ----

export const DEFAULT_FIELDS = new Set(["width", "height", "steps"]);
// A workflow node's input that a form field sets; any other node problem points at the template.
export const INPUT_FIELDS = { width: "width", height: "height", steps: "steps", seed: "base_seed", text: "prompts",
  image: "images" };

/** The form control a problem points at (its request field, sheet row/column, or the node input the form sets). */
export function controlFor(form, problem) {
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
export function blamed(error, field, fileName, sentName) {
  if (!(error instanceof ApiError) || error.status === 0 || error.status === 401) return error;
  return new ApiError(error.status, { problems: error.problems.map((p) => {
    const text = String(p.reason || p.message);
    const message = text.includes(sentName) ? text.replaceAll(sentName, fileName)
      : text.includes(fileName) ? text : `${fileName}: ${text}`;
    return { ...p, field, message, reason: message };
  }) }, error.message);
}

/** Mark `control` wrong: aria-invalid, a visible mark on its label, and the sentence under it (read with it). */
export function markField(control, problem) {
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

export function clearFieldProblem(control) {
  if (!(control instanceof Element) || !control.hasAttribute("aria-invalid")) return;
  control.removeAttribute("aria-invalid");
  control.removeAttribute("aria-describedby");
  const label = control.closest("label");
  label?.classList.remove("invalid");
  label?.querySelector(".field-error")?.remove();
}

export function clearFieldProblems(form) {
  for (const control of form.querySelectorAll("[aria-invalid]")) clearFieldProblem(control);
}

export function defaultName() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `batch-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-`
    + `${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
}

const SUBMIT_ATTEMPTS = 5;

/** Call `send()` until it answers: again after a network error or a 503 (after its Retry-After), a few times;
 * `waiting(ms, error)` before each wait. */
export async function retrying(send, waiting) {
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

export function randomKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
