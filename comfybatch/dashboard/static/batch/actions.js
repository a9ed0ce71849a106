// @ts-check
// The batch view's buttons: cancel, downloads (sent with the key) and resume.
import { api } from "../api.js";
import { $, h } from "../dom.js";

/** @typedef {import("./view.js").BatchView} BatchView */

/** Methods of BatchView (view.js mixes them in): BatchActions. */
export class BatchActions {
  /** @this {BatchView} */
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

  /** @this {BatchView} */
  async download(format) {
    try {
      await this.save(`/api/batches/${this.id}/manifest?format=${format}`, `${this.status?.name || "batch"}-manifest.${format}`);
      this.message("");
    } catch (error) {
      this.message(error.status === 404 ? "No manifest yet: it is written when the batch finishes."
        : `Could not download the manifest: ${error.message}`);
    }
  }

  /** @this {BatchView} */
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

  /**
   * Download `path` with the key (a plain link cannot send it) under the server's file name.
   * @this {BatchView}
   */
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

  /**
   * "Retry failed" and "Render the rest": the same batch in a new run, which keeps every stored image.
   * @this {BatchView}
   */
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

}
