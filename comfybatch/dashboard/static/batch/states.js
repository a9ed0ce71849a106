// @ts-check
// Item and run states the batch view tells apart, and how often it reads the batch's status.

export const TERMINAL_ITEM = new Set(["done", "failed", "skipped", "cancelled"]);
export const PENDING_ITEM = new Set(["queued", "submitted", "retrying", "running"]);
export const TERMINAL_RUN = new Set(["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]);
export const STATUS_POLL_MS = 5000;

/** When the run entered the state a status (or a `run.*` event folded into it) names; -Infinity if not said.
 * @param {{state_at?: string | null} | null} status */
export function stateTime(status) {
  const at = Date.parse(status?.state_at ?? "");
  return Number.isNaN(at) ? -Infinity : at;
}
