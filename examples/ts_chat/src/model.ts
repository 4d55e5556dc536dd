/**
 * The simulated language model behind the chat example: two slow calls (`retrieve` picks
 * context documents, `plan` writes the answer) and the tokenizer the answer streams by.
 * Pure apart from the delay; never talks to the gateway (server.ts puts the calls in steps).
 */

import { createHash, randomBytes } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";

export const DOCUMENTS = [
  "Each step's result is recorded with the gateway once.",
  "A retried attempt gets its completed steps back and skips them.",
  "The client is held on its connection while the run retries.",
  "A result URL serves the response to a client that lost its connection.",
  "Step outputs are JSON and live in one SQLite file.",
  "A backend in any language needs only an HTTP client.",
] as const;
const OPENERS = ["Good question.", "In short:", "Here is how it works.", "Let me explain."] as const;
const CLOSERS = ["That is all there is to it.", "Nothing runs twice.", "Try it with curl."] as const;

/** What `retrieve` returns: indexes into DOCUMENTS, ascending. A JSON value, as a step's output must be. */
export interface Context {
  documents: number[];
}

/** A model call's settings: `temperature` 0 is greedy (the same answer every time). */
export interface Sampling {
  prompt: string;
  temperature: number;
  /** How long the call takes, in milliseconds: a model is slow. */
  delayMs: number;
}

/** Thrown by a call told to fail (`X-Fail-Step`): stands for a model API's 5xx or timeout. */
export class ModelError extends Error {
  override name = "ModelError";
}

/**
 * The model's randomness: seeded by the call and the prompt at temperature 0, fresh on
 * every call otherwise (sampling). A small xorshift generator: reproducible from a seed,
 * which Math.random is not.
 */
function generator(sampling: Sampling, call: string): () => number {
  const seed =
    sampling.temperature === 0
      ? createHash("sha256").update(`${call}\0${sampling.prompt}`).digest()
      : randomBytes(16);
  let [a, b, c, d] = [0, 4, 8, 12].map((offset) => seed.readUInt32LE(offset) || 1) as [number, number, number, number];
  return () => {
    // xorshift128: four 32-bit words of state, a value in [0, 1) per call.
    const t = a ^ (a << 11);
    [a, b, c] = [b, c, d];
    d = (d ^ (d >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return d / 2 ** 32;
  };
}

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)] as T;
}

/** Step 1, a slow model call: pick three context documents for the prompt. */
export async function retrieve(sampling: Sampling): Promise<Context> {
  await delay(sampling.delayMs);
  const random = generator(sampling, "retrieve");
  const pool = DOCUMENTS.map((_, i) => i);
  const chosen: number[] = [];
  while (chosen.length < 3) chosen.push(...pool.splice(Math.floor(random() * pool.length), 1));
  return { documents: chosen.sort((x, y) => x - y) };
}

/** Step 2, another slow model call: the answer's text, from the prompt and the context. */
export async function plan(sampling: Sampling, context: Context): Promise<string> {
  await delay(sampling.delayMs);
  const random = generator(sampling, "plan");
  const facts = context.documents.map((i) => {
    const fact = DOCUMENTS[i];
    if (fact === undefined) throw new RangeError(`no document ${i}`);
    return fact;
  });
  const topic = sampling.prompt.split(/\s+/).filter(Boolean).slice(0, 8).join(" ");
  return [pick(random, OPENERS), `You asked: "${topic}"`, ...facts, pick(random, CLOSERS)].join(" ");
}

/** The answer cut into tokens (words with their trailing space), the way it streams. */
export function tokens(answer: string): string[] {
  return answer.match(/\S+\s*/g) ?? [];
}
