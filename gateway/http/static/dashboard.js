// Durable Gateway dashboard: lists runs from the admin API and draws one run's timeline.
// Plain DOM and fetch, no build step. Every value from the API enters the page through
// textContent or setAttribute, never as HTML.
"use strict";

const TOKEN_KEY = "durable-gateway.admin-token";
const PAGE_SIZE = 50;
const STATUSES = ["running", "backoff", "suspended", "paused", "succeeded", "failed", "cancelled"];
const CANCELLABLE = new Set(["running", "backoff", "suspended", "paused"]);
const RETRYABLE = new Set(["failed", "cancelled", "paused"]); // what POST …/retry accepts

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  cursor: null,
  selected: null,
  listSeq: 0, // a newer load wins over a slower older one
  detailSeq: 0,
};

const $ = (id) => document.getElementById(id);

// ── DOM building ────────────────────────────────────────────────────────────

/** Make an element; `text` sets textContent, `on*` adds listeners, the rest are attributes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return node;
}

function badge(status) {
  const kind = STATUSES.includes(status) ? status : "unknown";
  return el("span", { class: `badge s-${kind}`, text: status || "?" });
}

function httpBadge(status) {
  const family = status >= 200 && status < 400 ? "ok" : status >= 400 && status < 500 ? "warn" : "bad";
  return el("span", { class: `badge h-${family}`, text: String(status) });
}

// ── formatting ──────────────────────────────────────────────────────────────

const pad = (n) => String(n).padStart(2, "0");
const nowSeconds = () => Date.now() / 1000;

function clock(t) {
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function day(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function dateTime(t) {
  return t === null || t === undefined ? "—" : `${day(t)} ${clock(t)}`;
}

/** Today's times as a clock, older ones with their date. */
function shortTime(t) {
  if (t === null || t === undefined) return "—";
  return day(t) === day(nowSeconds()) ? clock(t) : `${day(t)} ${clock(t).slice(0, 5)}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${pad(Math.floor(s % 60))} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function runDuration(run) {
  return (run.finished_at ?? nowSeconds()) - run.created_at;
}

// ── the admin API ───────────────────────────────────────────────────────────

class AuthNeeded extends Error {}

class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && (problem.detail || problem.title);
    super(detail ? `${status}: ${detail}` : `the admin API answered ${status}`);
    this.status = status;
  }
}

/** Call the admin API (relative to this page) with the bearer token; 401 opens the token form. */
async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let resp;
  try {
    resp = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (err) {
    throw new Error(`cannot reach the admin API (${err.message})`);
  }
  if (resp.status === 401) {
    showLogin(state.token ? "That token was not accepted." : "");
    throw new AuthNeeded();
  }
  const isJson = (resp.headers.get("Content-Type") || "").includes("json");
  const body = isJson ? await resp.json() : null;
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
}

/** Report a failed call, except a 401 (the token form already says it). */
function report(err) {
  if (!(err instanceof AuthNeeded)) showMessage(err.message);
}

// ── token ───────────────────────────────────────────────────────────────────

function showLogin(text) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("sign-out").hidden = true;
  if (text) showMessage(text);
  else clearMessage();
  $("token-input").focus();
}

function useToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("sign-out").hidden = !token;
}

/** Take `token=` and `run=` from the URL fragment; the token leaves the address bar at once. */
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token !== null) {
    useToken(token);
    params.delete("token");
    setFragment(params);
  }
  return params.get("run");
}

function setFragment(params) {
  const hash = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (hash ? `#${hash}` : ""));
}

// ── runs list ───────────────────────────────────────────────────────────────

async function loadRoutes() {
  const data = await api("v1/routes");
  const select = $("route-filter");
  const current = select.value;
  select.replaceChildren(el("option", { value: "", text: "All routes" }));
  for (const route of data.routes) {
    if (route.durable === false) continue; // plain proxy routes make no runs
    select.append(el("option", { value: route.name, text: route.name }));
  }
  select.value = current;
}

async function loadRuns(append) {
  const seq = ++state.listSeq;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if ($("route-filter").value) query.set("route", $("route-filter").value);
  if ($("status-filter").value) query.set("status", $("status-filter").value);
  if (append && state.cursor) query.set("cursor", state.cursor);
  const data = await api(`v1/runs?${query}`);
  if (seq !== state.listSeq) return;
  const body = $("runs-body");
  if (!append) body.replaceChildren();
  for (const run of data.runs) body.append(runRow(run));
  state.cursor = data.next_cursor || null;
  $("load-more").hidden = !state.cursor;
  $("runs-empty").hidden = body.children.length > 0;
  markSelected();
}

function runRow(run) {
  const open = () => selectRun(run.run_id);
  const finished = run.finished_at !== null && run.finished_at !== undefined;
  const request = `${run.method || ""} ${run.path || ""}`.trim();
  return el(
    "tr",
    {
      "data-run-id": run.run_id,
      tabindex: 0,
      onclick: open,
      onkeydown: (e) => e.key === "Enter" && open(),
    },
    // The last characters: an id starts with its creation time, shared by runs made together.
    el("td", {}, el("code", { title: run.run_id, text: `…${run.run_id.slice(-10)}` })),
    el("td", { text: run.route }),
    el("td", {}, badge(run.status)),
    el("td", { class: "num", text: run.attempt }),
    el("td", { class: "request", title: request, text: request }),
    el("td", { title: dateTime(run.created_at), text: shortTime(run.created_at) }),
    el("td", {
      class: finished ? "num" : "num live",
      title: finished ? null : "still going",
      text: duration(runDuration(run)),
    }),
  );
}

function markSelected() {
  for (const row of $("runs-body").children) {
    row.classList.toggle("selected", row.dataset.runId === state.selected);
  }
}

// ── one run ─────────────────────────────────────────────────────────────────

function selectRun(runId) {
  state.selected = runId;
  const params = new URLSearchParams(location.hash.slice(1));
  if (runId) params.set("run", runId);
  else params.delete("run");
  setFragment(params);
  markSelected();
  if (runId) openRun(runId).catch(report);
  else closeDetail();
}

function closeDetail() {
  state.detailSeq++; // a detail still loading must not reopen the panel
  $("detail").hidden = true;
  $("detail").replaceChildren();
  $("app").classList.remove("has-detail");
}

async function openRun(runId) {
  const seq = ++state.detailSeq;
  const panel = $("detail");
  panel.hidden = false;
  $("app").classList.add("has-detail");
  if (!panel.firstChild) panel.append(el("p", { class: "empty", text: "Loading run…" }));
  let run;
  try {
    run = await api(`v1/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    if (seq === state.detailSeq && !(err instanceof AuthNeeded)) {
      panel.replaceChildren(detailHeader(runId, null), el("p", { class: "error", text: err.message }));
    }
    return;
  }
  if (seq !== state.detailSeq) return;
  panel.replaceChildren(...renderRun(run).filter(Boolean));
  // A bar's label stays only where it fits; the tooltip always has it.
  for (const bar of panel.querySelectorAll(".bar")) {
    if (bar.scrollWidth > bar.clientWidth) bar.textContent = "";
  }
  for (const track of panel.querySelectorAll(".track")) unclutter(track);
}

/** A link for a URL the API gave, only when it is a web address (never `javascript:`). */
function webUrl(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function detailHeader(runId, status, traceUrl = null) {
  const trace = webUrl(traceUrl);
  return el(
    "div",
    { class: "detail-head" },
    el("h2", {}, "Run ", el("code", { class: "run-id", text: runId })),
    status ? badge(status) : null,
    el("span", { class: "spacer" }),
    // noopener: the trace viewer's tab gets no handle on this one (nor, by the page's
    // Referrer-Policy, its address with the run in it).
    trace ? el("a", { class: "trace-link", href: trace, target: "_blank", rel: "noopener", text: "Open trace" }) : null,
    el("button", {
      type: "button",
      class: "link close",
      title: "Close",
      "aria-label": "Close",
      text: "×",
      onclick: () => selectRun(null),
    }),
  );
}

function renderRun(run) {
  const req = run.request || {};
  const facts = [
    ["Route", run.route],
    ["Request", `${req.method || ""} ${req.path || ""} · ${bytes(req.body_bytes)}`],
    ["Created", dateTime(run.created_at)],
    [run.finished_at ? "Finished" : "Updated", dateTime(run.finished_at ?? run.updated_at)],
    ["Duration", duration(runDuration(run)) + (run.finished_at ? "" : " so far")],
    ["Attempts", String(run.attempt)],
  ];
  if (run.wake_at && !run.finished_at) facts.push(["Next wake", wakeText(run.wake_at)]);
  if (run.trace_id) facts.push(["Trace", el("code", { text: run.trace_id })]);
  return [
    detailHeader(run.run_id, run.status, run.trace_url),
    el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)])),
    actions(run),
    el("h3", { text: "Timeline" }),
    timeline(run),
    legend(),
    run.suspension ? suspension(run.suspension) : null,
    run.response ? response(run.response) : null,
    el("h3", { text: `Attempts (${run.attempts.length})` }),
    attemptsTable(run),
    el("h3", { text: `Steps (${run.steps.length})` }),
    stepsTable(run),
    ...(errorsTable(run) || []),
    el("h3", { text: "Request headers" }),
    headersTable(req.headers || []),
  ];
}

function wakeText(t) {
  const left = t - nowSeconds();
  return `${dateTime(t)} (${left > 0 ? `in ${duration(left)}` : "due"})`;
}

function actions(run) {
  const box = el("div", { class: "actions" });
  if (CANCELLABLE.has(run.status)) {
    box.append(
      el("button", {
        type: "button",
        class: "danger",
        text: "Cancel run",
        onclick: () => act(run.run_id, "cancel", "Cancel this run? Its upstream will not be called again."),
      }),
    );
  }
  if (RETRYABLE.has(run.status)) {
    box.append(
      el("button", {
        type: "button",
        class: "primary",
        text: "Retry run",
        onclick: () => act(run.run_id, "retry", null),
      }),
    );
  }
  return box.children.length ? box : null;
}

async function act(runId, action, question) {
  if (question && !window.confirm(question)) return;
  try {
    await api(`v1/runs/${encodeURIComponent(runId)}/${action}`, { method: "POST" });
    showMessage(action === "cancel" ? "Run cancelled." : "Retry scheduled.", "info");
  } catch (err) {
    report(err);
  }
  await Promise.all([openRun(runId), loadRuns(false)]).catch(report);
}

// ── timeline ────────────────────────────────────────────────────────────────

/** Colour class of an attempt bar: green 2xx/3xx, red failed, orange timeout, grey suspended. */
function outcomeClass(attempt) {
  if (attempt.ended_at === null || attempt.ended_at === undefined) return "running";
  const outcome = String(attempt.outcome || "").toLowerCase();
  if (outcome === "timeout") return "timeout";
  if (outcome.startsWith("suspend") || outcome === "sleep" || outcome === "wait") return "suspended";
  if (outcome.startsWith("cancel")) return "cancelled";
  if (outcome === "response" && attempt.status >= 200 && attempt.status < 400) return "ok";
  return "failed";
}

function outcomeText(attempt) {
  if (attempt.ended_at === null || attempt.ended_at === undefined) return "in progress";
  if (attempt.outcome === "response" && attempt.status) return `HTTP ${attempt.status}`;
  return String(attempt.outcome || "?").replace("_", " ");
}

function timeline(run) {
  const start = run.created_at;
  let end = run.finished_at ?? nowSeconds();
  // Stretch to whatever was recorded, so a little clock skew never pushes a bar off the axis.
  for (const a of run.attempts) end = Math.max(end, a.ended_at ?? a.started_at ?? start);
  // Every try of a step, placed: [attempt, step id, try, its place, its kind, its tooltip].
  const tries = [];
  for (const s of run.steps) {
    if (isCompleted(s)) {
      const p = placed(s);
      const tip = `${s.step_id} · ${bytes(s.output_bytes)} · ${when(s, p, start)} (attempt ${s.attempt})${tookText(s)}`;
      tries.push([s.attempt, s.step_id, s, p, "step", tip]);
    }
    for (const e of stepErrors(s)) {
      const p = placed(e);
      const tip = `${s.step_id} failed · ${when(e, p, start)} (attempt ${e.attempt})${tookText(e)} · ${e.message}`;
      tries.push([e.attempt, s.step_id, e, p, "step-error", tip]);
    }
  }
  for (const [, , , p] of tries) end = Math.max(end, p.at); // a mark is where a try ended
  const span = Math.max(end - start, 0.001);
  const pct = (t) => Math.min(100, Math.max(0, ((t - start) / span) * 100));
  const place = (node, left, width) => {
    node.style.left = `${left}%`;
    if (width !== undefined) node.style.width = `${width}%`;
    return node;
  };

  const axis = el("div", { class: "track axis" });
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", { class: "tick", text: i === 0 ? clock(start) : `+${duration((span * i) / 4)}` });
    axis.append(place(tick, i * 25));
  }
  const box = el("div", { class: "timeline" }, el("div", { class: "lane" }, el("span"), axis));

  const lanes = new Map();
  for (const a of run.attempts) {
    const from = a.started_at ?? start;
    const to = a.ended_at ?? end;
    const left = pct(from);
    const width = Math.max(pct(to) - left, 0.8);
    const took = a.ended_at ? duration(a.ended_at - from) : "so far";
    const bar = el("div", {
      class: `bar o-${outcomeClass(a)}`,
      title: `Attempt ${a.attempt}: ${outcomeText(a)} · ${took}${a.detail ? ` · ${a.detail}` : ""}`,
      text: outcomeText(a),
    });
    const track = el("div", { class: "track" }, place(bar, left, width));
    lanes.set(a.attempt, track);
    box.append(el("div", { class: "lane" }, el("span", { class: "lane-label", text: `#${a.attempt}` }), track));
  }
  if (!lanes.size) box.append(el("p", { class: "empty", text: "No attempt has started yet." }));

  const lastLane = [...lanes.values()].pop();
  // Each try's work as a band on its attempt's bar, ending at its mark (a diamond for a
  // completed step, a red ring for a failed try) with its duration beside it. Bands
  // first, so marks sit on top.
  for (const [attempt, , , p, kind, tip] of tries) {
    const track = lanes.get(attempt) || lastLane;
    if (!track || p.from === null) continue;
    const left = pct(p.from);
    track.append(place(el("span", { class: `${kind}-span`, title: tip }), left, Math.max(pct(p.to) - left, 0.3)));
  }
  for (const [attempt, stepId, item, p, kind, tip] of tries) {
    const track = lanes.get(attempt) || lastLane;
    if (!track) continue;
    track.append(place(el("span", { class: `${kind}-mark`, title: tip }), pct(p.at)));
    if (known(item.duration_ms)) {
      const label = el("span", { class: "took-label", "data-step": stepId, title: tip, text: duration(item.duration_ms / 1000) });
      track.append(place(label, pct(p.at)));
    }
  }
  if (!run.finished_at) box.classList.add("open-ended");
  return box;
}

/**
 * Where a try of a step sits on the timeline. The backend's `started_at` places it when it
 * sent one, else the gateway's record of it (`created_at`). `from`..`to` is its work when
 * its duration is known (both null otherwise); `at`, its mark, is where the work ended, or
 * the one time known.
 */
function placed(item) {
  const took = known(item.duration_ms) ? item.duration_ms / 1000 : null;
  if (known(item.started_at)) {
    const to = took === null ? null : item.started_at + took;
    return { from: took === null ? null : item.started_at, to, at: to ?? item.started_at };
  }
  if (took === null) return { from: null, to: null, at: item.created_at };
  return { from: item.created_at - took, to: item.created_at, at: item.created_at };
}

/** "started +1.2 s" when the backend said, else "+1.2 s" for when the gateway recorded it. */
function when(item, p, start) {
  return known(item.started_at) ? `started +${duration(item.started_at - start)}` : `+${duration(p.at - start)}`;
}

/** Hide the duration labels of a lane that would cover its bar's label or one another
 * (left to right: the earlier try keeps its label); every tooltip still has them. */
function unclutter(track) {
  const taken = [];
  for (const bar of track.querySelectorAll(".bar")) {
    if (!bar.textContent) continue;
    const text = document.createRange();
    text.selectNodeContents(bar);
    const box = text.getBoundingClientRect();
    taken.push([box.left, box.right]);
  }
  const labels = [...track.querySelectorAll(".took-label")];
  labels.sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left);
  for (const label of labels) {
    const box = label.getBoundingClientRect();
    const clash = taken.some(([left, right]) => box.left < right + 4 && box.right + 4 > left);
    if (clash || box.right > track.getBoundingClientRect().right) label.hidden = true;
    else taken.push([box.left, box.right]);
  }
}

function legend() {
  const items = [
    ["ok", "2xx response"],
    ["failed", "failed / retried"],
    ["timeout", "timeout"],
    ["suspended", "suspended"],
    ["running", "in progress"],
  ];
  return el(
    "div",
    { class: "legend" },
    ...items.map(([cls, text]) => el("span", {}, el("i", { class: `swatch o-${cls}` }), text)),
    el("span", {}, el("i", { class: "swatch step" }), "step recorded"),
    el("span", {}, el("i", { class: "swatch step-error" }), "step failed"),
    el("span", {}, el("i", { class: "swatch took" }), "step duration"),
  );
}

function suspension(susp) {
  const rows = [["Step", susp.step_id]];
  if (susp.wake_at) rows.push([susp.kind === "wait" ? "Times out" : "Wakes", wakeText(susp.wake_at)]);
  if (susp.event) rows.push(["Event", susp.event]);
  // The API gives `match` as JSON text; an object is shown the same way.
  const match = typeof susp.match === "string" ? susp.match : JSON.stringify(susp.match ?? null);
  if (match && match !== "null" && match !== "{}") rows.push(["Match", match]);
  const title = susp.kind === "wait" ? "Waiting for an event" : "Durable sleep";
  return el(
    "div",
    { class: "callout suspension" },
    el("strong", { text: title }),
    el("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
  );
}

function response(resp) {
  const family = resp.status >= 200 && resp.status < 400 ? "ok" : "bad";
  return el(
    "div",
    { class: `callout response r-${family}` },
    el("strong", { text: "Final response" }),
    httpBadge(resp.status),
    el("span", { text: bytes(resp.body_bytes) }),
    el("code", { text: resp.content_type || "no content type" }),
  );
}

function attemptsTable(run) {
  if (!run.attempts.length) return el("p", { class: "empty", text: "None yet." });
  return el(
    "table",
    { class: "mini" },
    el("thead", {}, el("tr", {}, ...["#", "Started", "Took", "Outcome", "Detail"].map((h) => el("th", { text: h })))),
    el(
      "tbody",
      {},
      ...run.attempts.map((a) =>
        el(
          "tr",
          {},
          el("td", { text: a.attempt }),
          el("td", { title: dateTime(a.started_at), text: `+${duration((a.started_at ?? run.created_at) - run.created_at)}` }),
          el("td", { text: a.ended_at ? duration(a.ended_at - a.started_at) : "…" }),
          el("td", {}, el("i", { class: `swatch o-${outcomeClass(a)}` }), outcomeText(a)),
          el("td", { class: "detail-text", title: a.detail || "", text: a.detail || "" }),
        ),
      ),
    ),
  );
}

// ── steps ───────────────────────────────────────────────────────────────────

/** A step's recorded failed tries (none from a gateway that does not list them). */
const stepErrors = (step) => step.errors || [];
/** A time or duration the API gave (null when the backend did not report it). */
const known = (value) => typeof value === "number" && isFinite(value);
const isCompleted = (step) => step.completed !== false && step.created_at !== null && step.created_at !== undefined;

/** " · took 12 ms" for a try with a duration: its backend's, or else the gateway's guess. */
function tookText(item) {
  if (!known(item.duration_ms)) return "";
  return ` · took ${duration(item.duration_ms / 1000)}${item.timing === "gateway" ? " (seen by the gateway)" : ""}`;
}

function tookCell(item) {
  const took = known(item.duration_ms);
  return el("td", {
    class: "num",
    title: took && item.timing === "gateway" ? "from the attempt's previous record, as the gateway saw it" : null,
    text: took ? duration(item.duration_ms / 1000) : "—",
  });
}

/** When a try began, as its backend reported it, or else when the gateway recorded it. */
function sinceStart(run, item) {
  const began = known(item.started_at);
  const t = began ? item.started_at : item.created_at;
  const title = began ? `started ${dateTime(t)} · recorded ${dateTime(item.created_at)}` : dateTime(t);
  return el("td", { title, text: `+${duration(t - run.created_at)}` });
}

function stepsTable(run) {
  if (!run.steps.length) return el("p", { class: "empty", text: "No step recorded." });
  return el(
    "table",
    { class: "mini" },
    el("thead", {}, el("tr", {}, ...["Step", "Attempt", "At", "Took", "Output", "Failed tries"].map((h) => el("th", { text: h })))),
    el(
      "tbody",
      {},
      ...run.steps.map((s) => {
        const done = isCompleted(s);
        const errors = stepErrors(s);
        return el(
          "tr",
          { "data-step-id": s.step_id, class: done ? null : "incomplete" },
          el("td", {}, el("code", { text: s.step_id })),
          el("td", { text: done ? s.attempt : "—" }),
          done ? sinceStart(run, s) : el("td", { text: "—" }),
          done ? tookCell(s) : el("td", { class: "num", text: "—" }),
          el("td", { text: done ? bytes(s.output_bytes) : "not completed" }),
          el("td", { class: errors.length ? "num error" : "num", text: errors.length }),
        );
      }),
    ),
  );
}

function errorsTable(run) {
  const rows = run.steps.flatMap((s) => stepErrors(s).map((e) => [s, e]));
  rows.sort((a, b) => a[1].created_at - b[1].created_at);
  const dropped = run.step_errors_dropped || 0;
  if (!rows.length) return null;
  return [
    el("h3", { text: `Failed tries (${rows.length + dropped})` }),
    el(
      "table",
      { class: "mini" },
      el("thead", {}, el("tr", {}, ...["Step", "Attempt", "At", "Took", "Message"].map((h) => el("th", { text: h })))),
      el(
        "tbody",
        {},
        ...rows.map(([s, e]) =>
          el(
            "tr",
            { "data-error-step": s.step_id, "data-error-attempt": e.attempt },
            el("td", {}, el("code", { text: s.step_id })),
            el("td", { text: e.attempt }),
            sinceStart(run, e),
            tookCell(e),
            el("td", { class: "detail-text error", title: e.message, text: e.message }),
          ),
        ),
      ),
    ),
    dropped ? el("p", { class: "empty", text: `${dropped} later failed tries were counted but not kept.` }) : null,
  ];
}

/** The stored request's headers as the runs API gives them: credentials come redacted. */
function headersTable(headers) {
  if (!headers.length) return el("p", { class: "empty", text: "None." });
  return el(
    "table",
    { class: "mini headers" },
    el(
      "tbody",
      {},
      ...headers.map(([name, value]) =>
        el("tr", { "data-header": name.toLowerCase() }, el("th", {}, el("code", { text: name })), el("td", {}, el("code", { text: value }))),
      ),
    ),
  );
}

// ── start ───────────────────────────────────────────────────────────────────

async function refresh() {
  clearMessage();
  const jobs = [loadRoutes(), loadRuns(false)];
  if (state.selected) jobs.push(openRun(state.selected));
  const results = await Promise.allSettled(jobs);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) report(failed.reason);
}

function start() {
  $("where").textContent = location.host;
  state.selected = readFragment();
  $("sign-out").hidden = !state.token;

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useToken($("token-input").value.trim());
    $("token-input").value = "";
    enterApp();
  });
  $("sign-out").addEventListener("click", () => {
    useToken("");
    location.reload();
  });
  $("refresh").addEventListener("click", refresh);
  $("route-filter").addEventListener("change", () => loadRuns(false).catch(report));
  $("status-filter").addEventListener("change", () => loadRuns(false).catch(report));
  $("load-more").addEventListener("click", () => loadRuns(true).catch(report));
  window.addEventListener("hashchange", () => {
    const before = state.token;
    const run = readFragment();
    if (state.token !== before) {
      state.selected = run;
      enterApp();
    } else if (run && run !== state.selected) {
      selectRun(run);
    }
  });
  refresh();
}

function enterApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  refresh();
}

start();
