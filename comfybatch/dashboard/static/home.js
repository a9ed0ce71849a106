// @ts-check
// The home page.
import { BatchList } from "./batches.js";
import { fromTemplate } from "./dom.js";
import { FleetPanel } from "./fleet.js";
import { SubmitForm } from "./form.js";

/** The home page: the submit form, the fleet and the batch list, the last two read again every 10 s. */
export class HomeView {
  /** @param {HTMLElement} root */
  constructor(root) {
    root.append(fromTemplate("home-template"));
    this.form = new SubmitForm(root);
    this.list = new BatchList(root);
    this.fleet = new FleetPanel(root);
    this.timer = setInterval(() => {
      this.list.load(true, { quiet: true });
      this.fleet.load();
    }, 10000);
    this.form.loadTemplates();
    this.list.load(true);
    this.fleet.load();
  }

  dispose() {
    clearInterval(this.timer);
  }
}
