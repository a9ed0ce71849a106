// @ts-check
// comfybatch dashboard: submit batches and watch them render. Vanilla JS as ES modules, no build step.
import { askForKey, KEY_STORE, takeKeyFromLink } from "./api.js";
import { BatchView } from "./batch/view.js";
import { HomeView } from "./home.js";

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
// The view on screen stays the page's global `current`, as the classic script's top-level `let` made it: the scale
// browser test feeds events to it.
Object.defineProperty(window, "current", { get: () => current });

function route() {
  current?.dispose();
  const main = document.getElementById("main");
  main.replaceChildren();
  const match = location.hash.match(/^#\/batches\/([0-9a-fA-F-]{36})$/);
  current = match ? new BatchView(main, match[1]) : new HomeView(main);
}

takeKeyFromLink();
setUpKeyPanel();
window.addEventListener("hashchange", route);
route();
