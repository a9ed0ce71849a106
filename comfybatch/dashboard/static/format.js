// @ts-check
// What a person reads: durations, item numbers, media kinds, server display names.

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** The number a person reads for an item: 1-based (`#1` is the first), its key only when the index is unknown. */
export function itemNumber(item) {
  return Number.isInteger(item.index) ? `#${item.index + 1}` : String(item.key || "").slice(0, 8);
}

// The media types of what ComfyUI's save nodes write (outputs/manifest.py); the items API says it, an event's file
// name has only its extension.
export const MEDIA_TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp", gif: "image/gif",
  webm: "video/webm", mp4: "video/mp4", mov: "video/quicktime", flac: "audio/flac", mp3: "audio/mpeg",
  opus: "audio/ogg", ogg: "audio/ogg", wav: "audio/wav" };

export function mediaOfFile(name) {
  const ext = String(name || "").match(/\.([A-Za-z0-9]+)$/)?.[1]?.toLowerCase();
  return MEDIA_TYPES[ext] || null;
}

/** "video", "audio" or "image" (animated WebP/PNG and GIF included: an <img> plays them). */
export function mediaKind(item) {
  const media = String(item.media || mediaOfFile(item.file) || "image/png");
  return media.startsWith("video/") ? "video" : media.startsWith("audio/") ? "audio" : "image";
}

/** An image-in item's input as its file was named (an upload's stored name starts with 16 hex digits of its hash). */
export function inputName(item) {
  const image = item.values?.image;
  if (typeof image !== "string") return null;
  return image.split(/[\\/]/).pop().replace(/^[0-9a-f]{16}-/, "") || null;
}

export function safeHttpUrl(value) {
  try {
    const url = new URL(value, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// ---- Server display names (from configuration; the name stays the key) ----

export const serverNames = new Map(); // name -> display name, from the last /api/servers read

export function serverLabel(server) {
  return server.display_name || server.name;
}

export function rememberServerNames(servers) {
  for (const server of servers) serverNames.set(server.name, serverLabel(server));
}

/** The name a person reads for server `name`: its display name once the fleet has been read. */
export function serverName(name) {
  return (name && serverNames.get(name)) || name;
}
