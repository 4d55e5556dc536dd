/**
 * What a backend's response tells the gateway (SPEC.md §7, §4.7): `Durable-Retry: no`,
 * `Retry-After`, and the body of a suspended attempt. Plain data, usable with a Web
 * `Response` and with Node's `res.writeHead` alike.
 */

import type { Suspend } from "./errors.js";
import { RETRY } from "./wire.js";

/** Status of the suspend response: the gateway ignores it; 202 tells a direct caller "not done". */
export const SUSPEND_STATUS = 202;

/** A ResponseInit whose headers are a plain record, so Node's writeHead takes them too. */
export interface ResponseInitRecord {
  status?: number;
  statusText?: string;
  headers: Record<string, string>;
}

type HeaderPairs = Record<string, string> | [string, string][] | { forEach(cb: (value: string, name: string) => void): void };

export interface ResponseInitLike {
  status?: number;
  statusText?: string;
  headers?: HeaderPairs;
}

/**
 * `init` plus `Durable-Retry: no`: the gateway takes this failure as final and does not
 * retry it, whatever its status. `new Response(body, noRetry({status: 500}))`, or
 * `res.writeHead(500, noRetry().headers)`.
 */
export function noRetry(init: ResponseInitLike = {}): ResponseInitRecord {
  return withHeader(init, RETRY, "no");
}

/**
 * `init` plus `Retry-After`: the gateway waits at least this long before the next
 * attempt of a retried response (a 503, say). `seconds` is a whole number >= 0 (a
 * fraction is rounded up), or a Date sent as an HTTP-date.
 */
export function retryAfter(seconds: number | Date, init: ResponseInitLike = {}): ResponseInitRecord {
  let value: string;
  if (seconds instanceof Date) {
    if (Number.isNaN(seconds.getTime())) throw new RangeError("retryAfter: invalid Date");
    value = seconds.toUTCString();
  } else {
    if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) {
      throw new RangeError(`retryAfter takes seconds >= 0 or a Date, not ${String(seconds)}`);
    }
    value = String(Math.ceil(seconds));
  }
  return withHeader(init, "Retry-After", value);
}

function withHeader(init: ResponseInitLike, name: string, value: string): ResponseInitRecord {
  const headers: Record<string, string> = {};
  const add = (value: string, key: string): void => {
    if (key.toLowerCase() !== name.toLowerCase()) headers[key] = value;
  };
  const given = init.headers;
  if (Array.isArray(given)) for (const [key, v] of given) add(v, key);
  else if (given && typeof (given as { forEach?: unknown }).forEach === "function") {
    (given as { forEach(cb: (value: string, name: string) => void): void }).forEach(add);
  } else if (given) for (const [key, v] of Object.entries(given)) add(v as string, key);
  headers[name] = value;
  const out: ResponseInitRecord = { headers };
  if (init.status !== undefined) out.status = init.status;
  if (init.statusText !== undefined) out.statusText = init.statusText;
  return out;
}

/** The suspend response's JSON: `{"suspended": true, "kind", "wake_at", "step_id"}` (SPEC.md §4.7). */
export function suspendBody(suspend: Suspend): {
  suspended: true;
  kind: string;
  wake_at: string | null;
  step_id: string;
} {
  return {
    suspended: true,
    kind: suspend.kind,
    wake_at: suspend.wakeAt ? suspend.wakeAt.toISOString() : null,
    step_id: suspend.stepId,
  };
}
