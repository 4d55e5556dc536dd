/**
 * Durable Gateway's step protocol client for TypeScript and JavaScript backends:
 * `durable(headers)` gives a RunContext with `step`, `sleep` and `waitForEvent`.
 * Runtime-neutral (Node 18+, Bun, Deno); framework adapters live in `/node`, `/web`,
 * `/express`, `/fastify` and `/hono`.
 */

export {
  DEFAULT_MAX_ANSWER_BYTES,
  DEFAULT_TIMEOUT_MS,
  RunContext,
  durable,
  parseHeaders,
  type ContextOptions,
  type DurableEvent,
  type HeadersInput,
  type RunInfo,
  type StepOptions,
} from "./context.js";
export {
  SidecarError,
  StaleAttempt,
  StepProtocolError,
  Suspend,
  isSuspend,
  type Problem,
  type SuspendKind,
} from "./errors.js";
export {
  SUSPEND_STATUS,
  noRetry,
  retryAfter,
  suspendBody,
  type ResponseInitLike,
  type ResponseInitRecord,
} from "./responses.js";
export {
  PROTOCOL_VERSION,
  decodeSteps,
  encodeSteps,
  stepPath,
  type Duration,
  type Json,
  type Match,
  type SleepFor,
  type WaitOptions,
} from "./wire.js";
