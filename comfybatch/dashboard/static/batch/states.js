// @ts-check
// Item and run states the batch view tells apart, and how often it reads the batch's status.

export const TERMINAL_ITEM = new Set(["done", "failed", "skipped", "cancelled"]);
export const PENDING_ITEM = new Set(["queued", "submitted", "retrying", "running"]);
export const TERMINAL_RUN = new Set(["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]);
export const STATUS_POLL_MS = 5000;
