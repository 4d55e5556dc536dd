/**
 * Adapter for Hono: a middleware that sets `c.var.durable` and turns a `Suspend` from the
 * handlers behind it into the 202 suspend response, and an `onError` wrapper that keeps
 * Suspend out of the app's error handler. Runtime-neutral like Hono itself; typed by what
 * it touches, so this package needs no Hono installed.
 */

import { durable, type ContextOptions, type HeadersInput, type RunContext } from "./context.js";
import type {} from "hono"; // the module augmented below; types only
import { isSuspend } from "./errors.js";
import { suspendResponse } from "./web.js";

declare module "hono" {
  interface ContextVariableMap {
    /** This attempt's run context; set by `durableMiddleware()` on the routes behind it. */
    durable: RunContext;
  }
}

/** For `new Hono<{Variables: DurableVariables}>()` where ContextVariableMap is not seen. */
export interface DurableVariables {
  durable: RunContext;
}

/** What the adapter touches of Hono's context. */
export interface HonoContextLike {
  readonly req: { readonly raw: { readonly headers: HeadersInput } };
  set(key: "durable", value: RunContext): void;
  /** The error a handler behind the middleware threw, once the app's onError answered it. */
  readonly error: Error | undefined;
  res: Response;
}

export type HonoErrorHandler<C> = (err: Error, c: C) => Response | Promise<Response>;

/**
 * `app.use(durableMiddleware())`: every request behind it gets `c.var.durable`, and a
 * `Suspend` from a handler becomes the 202 suspend response.
 *
 * Hono hands a handler's error to the app's onError before this middleware sees it, so
 * the suspend response replaces what onError answered; wrap onError in `durableOnError`
 * so a Suspend never reaches it (Hono's default one logs it as an error). Incomplete
 * Durable-* headers throw, for onError to answer (a 500 the gateway retries).
 */
export function durableMiddleware(
  options: ContextOptions = {},
): (c: HonoContextLike, next: () => Promise<void>) => Promise<void> {
  return async (c, next) => {
    c.set("durable", durable(c.req.raw.headers, options));
    try {
      await next();
    } catch (err) {
      if (!isSuspend(err)) throw err; // an onError that rethrows, or none
      c.res = suspendResponse(err);
      return;
    }
    if (isSuspend(c.error)) c.res = suspendResponse(c.error);
  };
}

/**
 * `app.onError(durableOnError(handler))`: answers a `Suspend` with the 202 suspend
 * response and passes any other error to `handler`; without one, it answers as Hono's
 * default does (an error's own `getResponse()`, else a logged 500).
 */
export function durableOnError<C>(handler: HonoErrorHandler<C> = defaultOnError): HonoErrorHandler<C> {
  if (typeof handler !== "function") throw new TypeError("durableOnError takes an error handler function");
  return (err, c) => (isSuspend(err) ? suspendResponse(err) : handler(err, c));
}

function defaultOnError(err: Error): Response {
  const withResponse = err as Error & { getResponse?: unknown };
  if (typeof withResponse.getResponse === "function") return (withResponse.getResponse as () => Response)();
  console.error(err);
  return new Response("Internal Server Error", { status: 500, headers: { "content-type": "text/plain; charset=UTF-8" } });
}
