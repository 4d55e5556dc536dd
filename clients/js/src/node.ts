/**
 * Adapter for plain `node:http` (and anything that hands over Node's req and res):
 * builds the run context from `req.headers`, answers `Suspend` with the 202 suspend
 * response, and answers any other error itself, because a rejected promise in a Node
 * request listener has nobody to catch it.
 */

import type { IncomingMessage, ServerResponse } from "node:http";

import { durable, type ContextOptions, type RunContext } from "./context.js";
import { isSuspend, StaleAttempt, type Suspend } from "./errors.js";
import { SUSPEND_STATUS, suspendBody } from "./responses.js";

export type NodeHandler<Req extends IncomingMessage, Res extends ServerResponse> = (
  ctx: RunContext,
  req: Req,
  res: Res,
) => unknown;

export interface ListenerOptions<Req extends IncomingMessage, Res extends ServerResponse> extends ContextOptions {
  /**
   * Called with an error the handler threw (not a Suspend). By default it is logged with
   * console.error (a StaleAttempt is not: it is expected) and answered with a 500, which
   * the gateway retries; after the headers went out the connection is dropped instead,
   * so the gateway sees a broken response, never a truncated one taken as complete.
   */
  onError?: (err: unknown, req: Req, res: Res) => void;
}

/**
 * Wrap a handler for `http.createServer`:
 *
 *     http.createServer(durableListener(async (ctx, req, res) => {
 *       const quote = await ctx.step("quote", () => getQuote());
 *       res.writeHead(200, {"content-type": "application/json"}).end(JSON.stringify(quote));
 *     }));
 *
 * The returned listener's promise never rejects.
 */
export function durableListener<
  Req extends IncomingMessage = IncomingMessage,
  Res extends ServerResponse = ServerResponse,
>(handler: NodeHandler<Req, Res>, options: ListenerOptions<Req, Res> = {}): (req: Req, res: Res) => Promise<void> {
  if (typeof handler !== "function") throw new TypeError("durableListener takes a handler function");
  const { onError = answerError, ...contextOptions } = options;
  return async (req, res) => {
    try {
      await handler(durable(req.headers, contextOptions), req, res);
    } catch (err) {
      try {
        if (isSuspend(err)) answerSuspend(res, err);
        else onError(err, req, res);
      } catch (answerErr) {
        console.error("durable-gateway client: could not answer an error", answerErr);
        res.destroy();
      }
    }
  };
}

/**
 * What `answerSuspend` touches of a response: Node's ServerResponse, and the frameworks
 * built on it (Express's res, Fastify's reply.raw), fit it as they are.
 */
export interface NodeResponseLike {
  readonly headersSent: boolean;
  writeHead(status: number, headers: Record<string, string>): unknown;
  end(body?: string): unknown;
}

/** Write the 202 suspend response, or end what was started (the gateway ignores it). */
export function answerSuspend(res: NodeResponseLike, suspend: Suspend): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const body = JSON.stringify(suspendBody(suspend));
  res.writeHead(SUSPEND_STATUS, {
    "content-type": "application/json",
    "content-length": String(new TextEncoder().encode(body).length),
  });
  res.end(body);
}

function answerError(err: unknown, _req: IncomingMessage, res: ServerResponse): void {
  if (!(err instanceof StaleAttempt)) console.error("durable handler failed:", err);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: "internal error" });
  res.writeHead(500, { "content-type": "application/json", "content-length": String(body.length) });
  res.end(body);
}
