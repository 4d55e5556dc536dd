/**
 * What this package throws, and `Suspend`, which is not a failure.
 *
 *   StepProtocolError      misuse, or headers that make no sense
 *   └── SidecarError       the sidecar refused a call or could not be reached
 *       └── StaleAttempt   a newer attempt of the run has started
 *   Suspend                a sleep or wait is not over: end the handler (adapters answer 202)
 */

/** Base of every error this package throws. */
export class StepProtocolError extends Error {
  override name = "StepProtocolError";
}

/** A problem+json body (RFC 9457) as the sidecar sends it; unknown members are kept. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  run_id?: string;
  [member: string]: unknown;
}

/**
 * The sidecar refused a call, or could not be reached (`status` is null then).
 * The step was not recorded: let the handler fail so the gateway retries it.
 */
export class SidecarError extends StepProtocolError {
  override name = "SidecarError";
  readonly status: number | null;
  readonly problem: Problem;

  constructor(status: number | null, problem: Problem, options?: { cause?: unknown }) {
    const detail = problem.detail ?? problem.title ?? "";
    super(status === null ? String(detail) : `sidecar answered ${status}: ${detail}`, options);
    this.status = status;
    this.problem = problem;
  }
}

/**
 * A newer attempt of this run has started; this one's writes are refused (SPEC.md §5).
 * Nothing this attempt does counts any more: let it propagate and end the handler.
 */
export class StaleAttempt extends SidecarError {
  override name = "StaleAttempt";
}

/** What a suspended attempt waits for. */
export type SuspendKind = "sleep" | "wait";

/**
 * The gateway asked this attempt to suspend: end the handler now; it will be re-invoked.
 *
 * Not a StepProtocolError, because nothing failed. Let it propagate to an adapter
 * (`/node`, `/web`, `/express`, `/fastify`, `/hono`), or catch it with `isSuspend` and
 * answer anything: the gateway ignores the response of an attempt that suspended. `wakeAt` is when it re-invokes at the latest
 * (a sleep's end, a wait's timeout); null for a wait that only a matching event ends.
 */
export class Suspend extends Error {
  override name = "Suspend";
  readonly kind: SuspendKind;
  readonly stepId: string;
  readonly wakeAt: Date | null;

  constructor(kind: SuspendKind, stepId: string, wakeAt: Date | null) {
    const when = wakeAt ? wakeAt.toISOString() : "a matching event";
    super(`${kind} ${JSON.stringify(stepId)} suspends the run until ${when}`);
    this.kind = kind;
    this.stepId = stepId;
    this.wakeAt = wakeAt;
  }

  /** A wait's timeout (null: no timeout); always null for a sleep. */
  get timeoutAt(): Date | null {
    return this.kind === "wait" ? this.wakeAt : null;
  }
}

/** Whether `err` is a Suspend, across copies of this package loaded twice. */
export function isSuspend(err: unknown): err is Suspend {
  return err instanceof Suspend || (err instanceof Error && err.name === "Suspend" && "stepId" in err);
}
