// @ts-check
// DOM helpers. Data from the server is only ever put into the page as text (textContent, text nodes, attributes).

/**
 * Create an element; string children become text nodes, never markup.
 * @param {string} tag
 * @param {Record<string, any>} [props] attributes; `class`, `testid` (data-testid) and `on<event>` listeners
 * @param {...any} children
 * @returns {any}
 */
export function h(tag, props = {}, ...children) {
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

/** @type {(root: ParentNode, testid: string) => any} the element with this data-testid under `root` */
export const $ = (root, testid) => root.querySelector(`[data-testid="${testid}"]`);

export function fromTemplate(id) {
  return document.getElementById(id).content.cloneNode(true);
}
