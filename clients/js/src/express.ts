/**
 * Adapter for Express: a middleware that puts the run context on `req.durable`, and an
 * error handler that answers `Suspend` with the 202 suspend response and passes every
 * other error on. Typed by what it touches, so this package needs no Express installed.
 */

import { durable, type ContextOptions, type HeadersInput, type RunContext } from "./context.js";
import { isSuspend } from "./errors.js";
import { answerSuspend, type NodeResponseLike } from "./node.js";

declare global {
  // Express's own types merge their Request with this interface (`Express.Request`).
  namespace Express {
    interface Request {
      /** This attempt's run context; set by `durableMiddleware()` on the routes behind it. */
      durable: RunContext;
    }
  }
}

/** What the middleware touches of Express's request. */
export interface ExpressRequestLike {
  headers: HeadersInput;
  durable?: RunContext;
}

export type NextFunctionLike = (err?: unknown) => void;

/**
 * `app.use(durableMiddleware())`: every request behind it gets `req.durable`. Incomplete
 * Durable-* headers go to `next(err)` (the gateway retries the 500 an app answers).
 */
export function durableMiddleware(
  options: ContextOptions = {},
): (req: ExpressRequestLike, res: unknown, next: NextFunctionLike) => void {
  return (req, _res, next) => {
    try {
      req.durable = durable(req.headers, options);
    } catch (err) {
      next(err);
      return;
    }
    next();
  };
}

/**
 * `app.use(durableErrorHandler())` after the routes: answers a `Suspend` with the 202
 * suspend response and passes any other error on to the app's own error handlers.
 *
 * Express 5 passes a handler's rejected promise to it; on Express 4, catch in the async
 * handler and call `next(err)`.
 */
export function durableErrorHandler(): (
  err: unknown,
  req: unknown,
  res: NodeResponseLike,
  next: NextFunctionLike,
) => void {
  // Express tells error handlers by their four parameters: keep all four.
  return (err, _req, res, next) => {
    if (isSuspend(err)) answerSuspend(res, err);
    else next(err);
  };
}
