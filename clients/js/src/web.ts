/**
 * Adapter for Web-standard handlers, `(request: Request) => Response`: Next.js route
 * handlers, Hono (`c.req.raw`), Bun.serve, Deno.serve. Catches only `Suspend`; any other
 * error goes on to the framework, which answers it (a 500 the gateway retries).
 */

import { durable, type ContextOptions, type RunContext } from "./context.js";
import { isSuspend, type Suspend } from "./errors.js";
import { SUSPEND_STATUS, suspendBody } from "./responses.js";

export type WebHandler<A extends unknown[]> = (
  request: Request,
  ctx: RunContext,
  ...rest: A
) => Response | Promise<Response>;

/**
 * Wrap a handler that takes the run context after the request:
 *
 *     export const POST = durableHandler(async (request, ctx) => {
 *       const quote = await ctx.step("quote", () => getQuote());
 *       return Response.json(quote);
 *     });
 *
 * Arguments after the request (Next.js's route context, Bun's server, Deno's info) are
 * passed on after `ctx`. A `Suspend` becomes the 202 suspend response.
 */
export function durableHandler<A extends unknown[]>(
  handler: WebHandler<A>,
  options: ContextOptions = {},
): (request: Request, ...rest: A) => Promise<Response> {
  if (typeof handler !== "function") throw new TypeError("durableHandler takes a handler function");
  return async (request, ...rest) => {
    const ctx = durable(request.headers, options);
    try {
      return await handler(request, ctx, ...rest);
    } catch (err) {
      if (isSuspend(err)) return suspendResponse(err);
      throw err;
    }
  };
}

/** The 202 suspend response for a caught `Suspend` (the gateway ignores its content). */
export function suspendResponse(suspend: Suspend): Response {
  return new Response(JSON.stringify(suspendBody(suspend)), {
    status: SUSPEND_STATUS,
    headers: { "content-type": "application/json" },
  });
}
