// jobgate status page: every byte of data comes from the JSON API with the key the user
// typed. The key lives in sessionStorage (this tab only) and is sent as a Bearer header;
// it never goes into a URL, a cookie or the page's markup.
"use strict";

const KEY_SLOT = "jobgate.key";
const ROLE_SLOT = "jobgate.role";
const TERMINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ API access

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.code = error.code || "http_error";
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_SLOT);
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${apiKey()}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: options.signal,
    credentials: "omit",
    cache: "no-store",
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// ------------------------------------------------------------------ small helpers

function show(element, visible) {
  element.hidden = !visible;
}

function showError(element, error) {
  element.textContent = error ? describeError(error) : "";
  show(element, Boolean(error));
}

function describeError(error) {
  if (typeof error === "string") return error;
  if (error instanceof ApiError && error.status === 401) {
    return "This API key is not valid. Check it and sign in again.";
  }
  if (error instanceof ApiError) return error.message;
  return "The gateway could not be reached. Is it running?";
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function badge(element, status) {
  element.textContent = status;
  element.className = `badge status-${status.toLowerCase()}`;
}

// A failed or revoked job's view has no percent: keep where the bar had got to.
function percentOf(view, previous = 0) {
  const progress = view.progress || {};
  if (view.status === "SUCCESS") return 100;
  const percent = Number(progress.percent);
  if (progress.percent == null || !Number.isFinite(percent)) {
    return TERMINAL.has(view.status) ? previous : 0;
  }
  return Math.max(0, Math.min(100, Math.round(percent)));
}

// ------------------------------------------------------------------ sign in / out

async function roleOf() {
  // Only admins may list partners: a 403 here means a (valid) partner key.
  try {
    await api("/v1/partners");
    return "admin";
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return "partner";
    throw error;
  }
}

async function signIn(key) {
  sessionStorage.setItem(KEY_SLOT, key);
  try {
    sessionStorage.setItem(ROLE_SLOT, await roleOf());
  } catch (error) {
    signOut();
    throw error;
  }
}

function signOut() {
  sessionStorage.removeItem(KEY_SLOT);
  sessionStorage.removeItem(ROLE_SLOT);
}

function isAdmin() {
  return sessionStorage.getItem(ROLE_SLOT) === "admin";
}

function showSignedIn(signedIn) {
  show($("nav-audit"), signedIn && isAdmin());
  show($("login"), !signedIn);
  show($("content"), signedIn);
  show($("logout"), signedIn);
  show($("who"), signedIn);
  $("who").textContent = signedIn ? `Signed in as ${isAdmin() ? "admin" : "partner"}` : "";
  showAdminParts(signedIn);
}

function requireSignIn(start) {
  const form = $("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    if (!key) {
      showError($("login-error"), "Enter an API key.");
      return;
    }
    $("login-submit").disabled = true;
    try {
      await signIn(key);
      input.value = "";
      showError($("login-error"), null);
      showSignedIn(true);
      start();
    } catch (error) {
      showError($("login-error"), error);
    } finally {
      $("login-submit").disabled = false;
    }
  });
  $("logout").addEventListener("click", () => {
    signOut();
    window.location.reload();
  });
  if (apiKey()) {
    showSignedIn(true);
    start();
  } else {
    showSignedIn(false);
    $("api-key").focus();
  }
}

function onUnauthorized(error) {
  // The key was revoked or mistyped: back to the form, saying why.
  if (error instanceof ApiError && error.status === 401) {
    signOut();
    showSignedIn(false);
    showError($("login-error"), error);
    return true;
  }
  return false;
}

// ------------------------------------------------------------------ jobs list

// One paged list (GET path?limit&cursor): the page's rows in place of the list, or after
// it (append); "more" shown while the API gives a next_cursor. Returns load(append).
function pagedList({ path, key, body, more, empty = null, error, row, limit = 20,
  filters = () => {}, loaded = () => {}, clearsError = true }) {
  let cursor = null;
  return async function load(append) {
    const params = new URLSearchParams({ limit: String(limit) });
    filters(params);
    if (append && cursor != null) params.set("cursor", String(cursor));
    try {
      const page = await api(`${typeof path === "function" ? path() : path}?${params}`);
      const rows = $(body);
      if (!append) rows.replaceChildren();
      rows.append(...page[key].map(row));
      cursor = page.next_cursor ?? null;
      show($(more), cursor != null);
      if (empty) show($(empty), rows.children.length === 0);
      if (clearsError) showError($(error), null);
      loaded(page);
    } catch (failure) {
      if (!onUnauthorized(failure)) showError($(error), failure);
    }
  };
}

function jobsPage() {
  let refreshTimer = null;

  function row(view) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = view.job_id;
    const link = document.createElement("a");
    link.href = `/ui/jobs/${encodeURIComponent(view.job_id)}`;
    link.textContent = view.job_id.slice(0, 8);
    link.title = view.job_id;
    const status = document.createElement("span");
    badge(status, view.status);
    const cells = [link, view.task, status, `${percentOf(view)}%`, when(view.created_at),
      ...jobListExtraCells(view)];
    for (const content of cells) {
      const td = document.createElement("td");
      if (content instanceof Node) td.append(content);
      else td.textContent = content;
      tr.append(td);
    }
    return tr;
  }

  const load = pagedList({
    path: "/v1/jobs", key: "jobs", body: "jobs-body", more: "more", empty: "jobs-empty",
    error: "list-error", row,
    filters(params) {
      const status = $("status-filter").value;
      if (status) params.set("status", status);
      jobListFilters(params);
    },
    loaded: (page) => scheduleRefresh(page.jobs.some((view) => !TERMINAL.has(view.status))),
  });

  function scheduleRefresh(anyRunning) {
    clearTimeout(refreshTimer);
    if (anyRunning) refreshTimer = setTimeout(() => load(false), 3000);
  }

  $("refresh").addEventListener("click", () => load(false));
  $("status-filter").addEventListener("change", () => load(false));
  $("more").addEventListener("click", () => load(true));
  jobListSearch(row, () => { clearTimeout(refreshTimer); }, () => load(false));
  requireSignIn(() => load(false));
}

// ------------------------------------------------------------------ one job

function jobPage(jobId) {
  let view = null;
  let live = null;

  function render(next) {
    view = next;
    show($("job"), true);
    $("job-task").textContent = view.task;
    badge($("job-status"), view.status);
    const percent = percentOf(view, Number($("progress").getAttribute("aria-valuenow")));
    $("progress-fill").style.width = `${percent}%`;
    $("progress").setAttribute("aria-valuenow", String(percent));
    $("progress").dataset.status = view.status;
    $("progress-percent").textContent = `${percent}%`;
    $("progress-message").textContent = (view.progress && view.progress.message) || "";

    show($("job-failure"), view.status === "FAILURE");
    $("job-error-message").textContent = view.error || "";
    const revoked = view.status === "REVOKED";
    show($("job-revocation"), revoked);
    if (revoked) {
      const by = view.revocation || {};
      $("job-revocation").textContent = `Revoked ${when(by.revoked_at)}` +
        (by.reason ? ` — ${by.reason}` : "");
    }
    show($("job-result"), view.status === "SUCCESS");
    $("job-result-json").textContent = JSON.stringify(view.result, null, 2);

    $("job-created").textContent = when(view.created_at);
    $("job-started").textContent = when(view.started_at);
    $("job-finished").textContent = when(view.finished_at);
    const hook = view.webhook || { state: "none", attempts: 0 };
    const sent = hook.endpoint_messages ? hook.endpoint_messages.length : 0;
    $("job-webhook").textContent = hook.state === "none" ? "no callback" :
      `${hook.state} (${hook.attempts} attempt${hook.attempts === 1 ? "" : "s"})` +
      (sent ? ` to ${sent} endpoint${sent === 1 ? "" : "s"}` : "");
    $("job-metadata").textContent = JSON.stringify(view.metadata || {}, null, 2);
    show($("revoke-box"), isAdmin() && !TERMINAL.has(view.status));
  }

  // Says how updates arrive; dataset.used keeps every mode this page has used.
  function markLive(mode) {
    const line = $("live-mode");
    line.textContent = `Live updates (${mode})`;
    const used = new Set((line.dataset.used || "").split(",").filter(Boolean)).add(mode);
    line.dataset.used = [...used].join(",");
  }

  // An SSE update is either a whole job view or {job_id, status, progress}.
  function applyUpdate(update) {
    if (!update || typeof update !== "object" || !update.status) return;
    render(update.task ? update : { ...view, ...update });
  }

  async function finish() {
    // The terminal event may be a short update: fetch the full view (result, error).
    render(await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
    $("live-mode").textContent = "";
  }

  async function stream(signal) {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
      headers: { Accept: "text/event-stream", Authorization: `Bearer ${apiKey()}` },
      credentials: "omit",
      cache: "no-store",
      signal,
    });
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
      const body = await response.json().catch(() => null);
      throw new ApiError(response.status, body);
    }
    markLive("event stream");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let received = 0;
    for (;;) {
      const { value, done } = await reader.read();
      // A healthy stream starts with the current view; an empty one must not loop fast.
      if (done && !received) throw new Error("The event stream ended without an event.");
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;  // comments (heartbeats) and bare event names
        received += 1;
        try {
          applyUpdate(JSON.parse(data));
        } catch {
          // a malformed event is skipped; the next one carries the full state again
        }
        if (TERMINAL.has(view.status)) return;
      }
    }
  }

  async function poll(signal) {
    markLive("polling");
    while (!signal.aborted && !TERMINAL.has(view.status)) {
      // ?wait holds until the job ends, so a finish shows at once; 1 s keeps progress moving.
      render(await api(`/v1/jobs/${encodeURIComponent(jobId)}?wait=1`, { signal }));
    }
  }

  async function follow() {
    live?.abort();
    live = new AbortController();
    const { signal } = live;
    let streamWorks = true;
    while (!signal.aborted && !TERMINAL.has(view.status)) {
      try {
        if (streamWorks) await stream(signal);
        else await poll(signal);
      } catch (error) {
        if (signal.aborted || onUnauthorized(error)) return;
        if (streamWorks) {
          // No events route (404/405), a proxy that breaks streams, a dropped connection:
          // polling works everywhere the JSON API does, so use it from now on.
          streamWorks = false;
          continue;
        }
        $("live-mode").textContent = "Connection lost; retrying…";
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
    if (!signal.aborted) await finish().catch(() => {});
  }

  async function revoke(event) {
    event.preventDefault();
    $("revoke-confirm").disabled = true;
    try {
      const reason = $("revoke-reason").value.trim() || "Revoked from the status page";
      render(await api(`/v1/jobs/${encodeURIComponent(jobId)}/revoke`, {
        method: "POST", body: { reason, terminate: true },
      }));
      showError($("revoke-error"), null);
    } catch (error) {
      if (!onUnauthorized(error)) showError($("revoke-error"), error);
    } finally {
      $("revoke-confirm").disabled = false;
    }
  }

  async function start() {
    try {
      render(await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
      showError($("job-error"), null);
    } catch (error) {
      if (onUnauthorized(error)) return;
      showError($("job-error"), error instanceof ApiError && error.status === 404
        ? "No job with this id is visible to this key." : error);
      return;
    }
    follow();
  }

  $("revoke").addEventListener("click", () => {
    show($("revoke-form"), true);
    show($("revoke"), false);
    $("revoke-reason").focus();
  });
  $("revoke-cancel").addEventListener("click", () => {
    show($("revoke-form"), false);
    show($("revoke"), true);
  });
  $("revoke-form").addEventListener("submit", revoke);
  window.addEventListener("pagehide", () => live?.abort());
  requireSignIn(start);
}

// ------------------------------------------------------------------ endpoints

// Run an endpoint action from ``button`` (disabled meanwhile); its error shows under the
// open endpoint.
async function act(button, work) {
  button.disabled = true;
  try {
    await work();
    showError($("detail-error"), null);
  } catch (error) {
    if (!onUnauthorized(error)) showError($("detail-error"), error);
  } finally {
    button.disabled = false;
  }
}

function endpointsPage() {
  let selected = null;

  function cell(tr, content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    tr.append(td);
  }

  function stateOf(endpoint) {
    if (!endpoint.enabled) return `disabled: ${endpoint.disabled_reason || ""}`;
    return endpoint.failing_since ? `failing since ${when(endpoint.failing_since)}` : "enabled";
  }

  function row(endpoint) {
    const tr = document.createElement("tr");
    tr.dataset.endpointId = endpoint.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = "Open";
    open.addEventListener("click", () => select(endpoint));
    cell(tr, endpoint.url);
    cell(tr, endpoint.event_types.length ? endpoint.event_types.join(", ") : "every event");
    cell(tr, stateOf(endpoint));
    cell(tr, open);
    return tr;
  }

  async function load() {
    // POST /v1/endpoints takes a partner's key only: an admin is not offered the form.
    show($("add-form"), !isAdmin());
    show($("add-admin-note"), isAdmin());
    try {
      const page = await api("/v1/endpoints");
      $("endpoints-body").replaceChildren(...page.endpoints.map(row));
      show($("endpoints-empty"), page.endpoints.length === 0);
      showError($("endpoints-error"), null);
      const fresh = selected && page.endpoints.find((e) => e.id === selected.id);
      if (fresh) showDetail(fresh);
    } catch (error) {
      if (!onUnauthorized(error)) showError($("endpoints-error"), error);
    }
  }

  async function add(event) {
    event.preventDefault();
    const types = $("add-events").value.split(",").map((t) => t.trim()).filter(Boolean);
    const body = { url: $("add-url").value.trim(), description: $("add-description").value };
    if (types.length) body.event_types = types;
    $("add-submit").disabled = true;
    try {
      const created = await api("/v1/endpoints", { method: "POST", body });
      $("add-secret").textContent = created.webhook_secret;
      show($("add-secret-box"), true);
      showError($("add-error"), null);
      $("add-form").reset();
      await load();
      select(created);
    } catch (error) {
      if (!onUnauthorized(error)) showError($("add-error"), error);
    } finally {
      $("add-submit").disabled = false;
    }
  }

  function showDetail(endpoint) {
    selected = endpoint;
    show($("detail"), true);
    $("detail-title").textContent = `${endpoint.url} (${stateOf(endpoint)})`;
    markDetail(endpoint);
    show($("detail-enable"), !endpoint.enabled);
    $("detail-test").disabled = !endpoint.enabled;
  }

  function select(endpoint) {
    showDetail(endpoint);
    $("detail-test-result").textContent = "";
    $("recover-result").textContent = "";
    const dayAgo = new Date(Date.now() - 86400 * 1000).toISOString();
    $("recover-since").value = dayAgo;
    loadAttempts(false);
  }

  function attemptRow(attempt) {
    const tr = document.createElement("tr");
    tr.dataset.webhookId = attempt.webhook_id;
    tr.dataset.outcome = attempt.outcome;
    cell(tr, when(attempt.at));
    cell(tr, attempt.event);
    cell(tr, attempt.outcome + (attempt.redelivery ? " (resent)" : ""));
    cell(tr, attempt.status_code == null ? "–" : String(attempt.status_code));
    cell(tr, attempt.error || "");
    cell(tr, exchangeDetails(attempt));
    return tr;
  }

  const attempts = pagedList({
    path: () => `/v1/endpoints/${encodeURIComponent(selected.id)}/attempts`, key: "attempts",
    body: "attempts-body", more: "attempts-more", empty: "attempts-empty",
    error: "detail-error", row: attemptRow,
    filters(params) {
      const status = $("attempts-filter").value;
      if (status) params.set("status", status);
    },
  });

  async function loadAttempts(append) {
    if (selected) await attempts(append);
  }

  function path(suffix) {
    return `/v1/endpoints/${encodeURIComponent(selected.id)}${suffix}`;
  }

  $("detail-test").addEventListener("click", () => act($("detail-test"), async () => {
    const attempt = await api(path("/test"), { method: "POST" });
    $("detail-test-result").textContent = `Test ${attempt.outcome}` +
      (attempt.status_code == null ? "" : ` (HTTP ${attempt.status_code})`) +
      (attempt.error ? `: ${attempt.error}` : "");
    await loadAttempts(false);
  }));
  $("detail-enable").addEventListener("click", () => act($("detail-enable"), async () => {
    showDetail(await api(path(""), { method: "PATCH", body: { enabled: true } }));
    await load();
  }));
  $("recover-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("recover-submit"), async () => {
      const since = $("recover-since").value.trim();
      const done = await api(path("/recover"), { method: "POST", body: { since } });
      $("recover-result").textContent =
        `${done.recovered} message${done.recovered === 1 ? "" : "s"} queued again.`;
    });
  });
  $("attempts-filter").addEventListener("change", () => loadAttempts(false));
  $("attempts-refresh").addEventListener("click", () => loadAttempts(false));
  $("attempts-more").addEventListener("click", () => loadAttempts(true));
  $("endpoints-refresh").addEventListener("click", load);
  $("add-form").addEventListener("submit", add);
  requireSignIn(load);
}

// ------------------------------------------------------------------ admin parts

// What only admins are shown: the Dashboard link and the jobs list's partner column.
function showAdminParts(signedIn) {
  const admin = signedIn && isAdmin();
  show($("nav-dashboard"), admin);
  const column = document.getElementById("col-partner");
  if (column) show(column, admin);
}

// ------------------------------------------------------------------ jobs list: additions

function cellLink(href, text, title) {
  const link = document.createElement("a");
  link.href = href;
  link.textContent = text;
  if (title) link.title = title;
  return link;
}

// The partner (admins only) and the batch, linked to its page.
function jobListExtraCells(view) {
  const cells = [];
  if (isAdmin()) cells.push(view.partner_id || "–");
  cells.push(view.batch_id
    ? cellLink(`/ui/batches/${encodeURIComponent(view.batch_id)}`, view.batch_id.slice(0, 8),
      view.batch_id)
    : "");
  return cells;
}

function jobListFilters(params) {
  const task = $("task-filter").value.trim();
  if (task) params.set("task", task);
}

// Find one job by id (shown alone in the list), or a batch (its page).
function jobListSearch(row, pause, reload) {
  const input = $("job-search-id");
  function clear() {
    input.value = "";
    show($("job-search-clear"), false);
    reload();
  }
  $("task-filter").addEventListener("change", reload);
  $("job-search-clear").addEventListener("click", clear);
  $("job-search").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = input.value.trim();
    if (!id) {
      clear();
      return;
    }
    $("job-search-submit").disabled = true;
    try {
      let view = null;
      try {
        view = await api(`/v1/jobs/${encodeURIComponent(id)}`);
      } catch (error) {
        if (!(error instanceof ApiError && (error.status === 404 || error.status === 422))) {
          throw error;
        }
      }
      if (!view) {
        try {
          await api(`/v1/batches/${encodeURIComponent(id)}`);
          window.location.assign(`/ui/batches/${encodeURIComponent(id)}`);
          return;
        } catch (error) {
          if (!(error instanceof ApiError && (error.status === 404 || error.status === 422))) {
            throw error;
          }
          throw "No job or batch with this id is visible to this key.";
        }
      }
      pause();
      $("jobs-body").replaceChildren(row(view));
      show($("more"), false);
      show($("jobs-empty"), false);
      show($("job-search-clear"), true);
      showError($("list-error"), null);
    } catch (error) {
      if (!onUnauthorized(error)) showError($("list-error"), error);
    } finally {
      $("job-search-submit").disabled = false;
    }
  });
}

// ------------------------------------------------------------------ one batch

function batchPage(batchId) {
  function render(batch) {
    show($("batch"), true);
    badge($("batch-status"), batch.status);
    $("batch-counts").textContent = `${batch.total} jobs: ${batch.succeeded} succeeded, ` +
      `${batch.failed} failed, ${batch.revoked} revoked, ${batch.pending} pending ` +
      `(${batch.percent}%). Created ${when(batch.created_at)}.`;
    $("batch-body").replaceChildren(...batch.jobs.map((member) => {
      const tr = document.createElement("tr");
      tr.dataset.jobId = member.job_id;
      const status = document.createElement("span");
      badge(status, member.status || "expired");
      const link = cellLink(`/ui/jobs/${encodeURIComponent(member.job_id)}`,
        member.job_id.slice(0, 8), member.job_id);
      for (const content of [link, member.task || "", status, when(member.finished_at)]) {
        const td = document.createElement("td");
        td.append(content);
        tr.append(td);
      }
      return tr;
    }));
  }

  async function load() {
    try {
      render(await api(`/v1/batches/${encodeURIComponent(batchId)}`));
      showError($("batch-error"), null);
    } catch (error) {
      if (onUnauthorized(error)) return;
      showError($("batch-error"), error instanceof ApiError && error.status === 404
        ? "No batch with this id is visible to this key." : error);
    }
  }
  requireSignIn(load);
}

// ------------------------------------------------------------------ dashboard

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(name, attributes = {}, title = null) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (title) {
    const tip = document.createElementNS(SVG_NS, "title");
    tip.textContent = title;
    element.append(tip);
  }
  return element;
}

function percent(rate) {
  return rate == null ? "–" : `${Math.round(rate * 1000) / 10}%`;
}

function minuteLabel(iso) {
  const date = new Date(iso);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// Started and ended jobs per minute (bars, left axis) and the delivery success rate
// (line, right axis, 0-100%), drawn from the dashboard's JSON: no chart library.
function activityChart(activity) {
  const width = 760;
  const height = 220;
  const pad = { left: 36, right: 44, top: 10, bottom: 24 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const minutes = activity.minutes;
  const slot = plotW / Math.max(1, minutes.length);
  const top = Math.max(1, ...minutes.map((m) => Math.max(m.started, m.ended)));
  const y = (count) => pad.top + plotH - (count / top) * plotH;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, id: "activity-svg",
    "data-started": String(activity.totals.started),
    "data-ended": String(activity.totals.ended),
    "data-success-rate": activity.totals.success_rate == null
      ? "" : String(activity.totals.success_rate),
  });
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left + plotW,
    y1: pad.top + plotH, y2: pad.top + plotH }));
  for (const [value, label] of [[0, "0"], [top, String(top)]]) {
    const text = svg("text", { x: pad.left - 6, y: y(value) + 3, "text-anchor": "end" });
    text.textContent = label;
    chart.append(text);
  }
  for (const [rate, label] of [[0, "0%"], [0.5, "50%"], [1, "100%"]]) {
    const text = svg("text", { x: pad.left + plotW + 6, y: pad.top + plotH - rate * plotH + 3 });
    text.textContent = label;
    chart.append(text);
  }
  const points = [];
  minutes.forEach((m, i) => {
    const x = pad.left + i * slot;
    const label = minuteLabel(m.minute);
    for (const [name, offset] of [["started", 0.1], ["ended", 0.5]]) {
      const count = m[name];
      if (!count) continue;
      chart.append(svg("rect", {
        class: `bar-${name}`, x: x + slot * offset, width: slot * 0.4,
        y: y(count), height: pad.top + plotH - y(count),
        "data-minute": m.minute, "data-count": String(count),
      }, `${label}: ${count} ${name}`));
    }
    if (m.success_rate != null) {
      const point = [x + slot / 2, pad.top + plotH - m.success_rate * plotH];
      points.push(point);
      chart.append(svg("circle", {
        class: "rate-dot", cx: point[0], cy: point[1], r: 2.5,
        "data-minute": m.minute, "data-rate": String(m.success_rate),
      }, `${label}: ${m.delivered} of ${m.attempts} deliveries (${percent(m.success_rate)})`));
    }
    if (i % 10 === 0) {
      const text = svg("text", { x, y: height - 6 });
      text.textContent = label;
      chart.append(text);
    }
  });
  if (points.length > 1) {
    chart.append(svg("polyline", { class: "rate", points: points.map((p) => p.join(",")).join(" ") }));
  }
  return chart;
}

function tableRow(cells, dataset = {}) {
  const tr = document.createElement("tr");
  Object.assign(tr.dataset, dataset);
  for (const content of cells) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    tr.append(td);
  }
  return tr;
}

function dashboardPage() {
  let timer = null;
  let listingAll = false; // the whole dead-letter list shown, not the board's newest

  function render(board) {
    show($("dash"), true);
    const totals = board.activity.totals;
    $("activity-totals").textContent = `${totals.started} started, ${totals.ended} ended, ` +
      `${totals.delivered} of ${totals.attempts} deliveries succeeded (` +
      `${percent(totals.success_rate)})`;
    $("activity-chart").replaceChildren(activityChart(board.activity));

    const workers = board.workers;
    $("workers-summary").textContent = `${workers.alive} online of ${workers.known} known`;
    $("workers-body").replaceChildren(...workers.nodes.map((node) => {
      const state = document.createElement("span");
      state.className = node.alive ? "state-alive" : "state-dead";
      state.textContent = node.alive ? "online" : "silent";
      return tableRow([node.node, node.pools.join(", ") || "–", String(node.slots),
        when(node.last_seen), state], { node: node.node, alive: String(node.alive) });
    }));

    const queues = board.queues;
    $("queues-summary").textContent = `${queues.totals.queued} queued, ` +
      `${queues.totals.running} running, ${queues.totals.delayed} delayed over ` +
      `${queues.partners_total} partner${queues.partners_total === 1 ? "" : "s"}` +
      (queues.partners_total > queues.partners.length
        ? ` (the ${queues.partners.length} deepest shown)` : "");
    $("queues-body").replaceChildren(...queues.partners.map((q) => tableRow(
      [q.name ? `${q.name} (${q.partner_id})` : q.partner_id, String(q.queued),
        String(q.running), String(q.delayed), String(q.total)],
      { partnerId: q.partner_id })));

    const ends = board.endpoints;
    $("endpoints-summary").textContent = `${ends.failing.count} failing, ` +
      `${ends.disabled.count} disabled` +
      (ends.failing.count + ends.disabled.count ? " (newest shown)" : "");
    $("bad-endpoints-body").replaceChildren(
      ...ends.failing.newest.map((e) => tableRow(
        [e.partner_id, e.url, `failing since ${when(e.failing_since)}`],
        { endpointId: e.id, state: "failing" })),
      ...ends.disabled.newest.map((e) => tableRow(
        [e.partner_id, e.url, `disabled ${when(e.disabled_at)}: ${e.disabled_reason || ""}`],
        { endpointId: e.id, state: "disabled" })),
    );

    const dead = board.dead_letters;
    $("dead-summary").textContent = `${dead.count} set aside`;
    if (!listingAll) {
      $("dead-body").replaceChildren(...dead.newest.map(deadRow));
    }
    $("dash-updated").textContent = `Updated ${when(board.generated_at)}`;
    $("dash").dataset.loads = String(Number($("dash").dataset.loads || 0) + 1);
  }

  function deadRow(letter) {
    return tableRow([when(letter.at), letter.kind, letter.subject_id,
      (letter.error || "").slice(0, 300)], { deadLetterId: String(letter.id) });
  }

  // The whole list (GET /v1/archive/dead-letters), page by page, in place of the newest.
  const allDeadLetters = pagedList({
    path: "/v1/archive/dead-letters", key: "dead_letters", body: "dead-body",
    more: "dead-more", error: "dash-error", row: deadRow,
    clearsError: false, // the board's own error, if any, stays until its next refresh
    loaded() {
      listingAll = true;
      show($("dead-all"), false);
    },
  });

  async function load() {
    clearTimeout(timer);
    if (!isAdmin()) {
      showError($("dash-error"), "The dashboard is for admins: sign in with an admin key.");
      return;
    }
    try {
      render(await api("/v1/dashboard"));
      showError($("dash-error"), null);
    } catch (error) {
      if (onUnauthorized(error)) return;
      showError($("dash-error"), error);
    }
    timer = setTimeout(load, 10000);
  }

  $("dash-refresh").addEventListener("click", load);
  $("dead-all").addEventListener("click", () => allDeadLetters(false));
  $("dead-more").addEventListener("click", () => allDeadLetters(true));
  requireSignIn(load);
}

// ------------------------------------------------------------------ message log (issue 28)
// Each attempt's request (as signed and sent) and response (as answered, bounded), the
// job page's deliveries with Redeliver, and managing an endpoint. Text only: every value
// goes in with textContent, never as markup.

const SETTLED = new Set(["delivered", "failed", "none"]);

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function headerLines(headers) {
  return Object.entries(headers || {}).map(([name, value]) => `${name}: ${value}`).join("\n");
}

function exchangePart(title, part, nothing, notes) {
  const box = document.createElement("div");
  box.className = "exchange-part";
  box.dataset.part = title.toLowerCase();
  const heading = document.createElement("h3");
  heading.textContent = title;
  box.append(heading);
  if (!part) {
    const none = document.createElement("p");
    none.className = "muted small";
    none.textContent = nothing;
    box.append(none);
    return box;
  }
  const headers = document.createElement("pre");
  headers.className = "exchange-headers";
  headers.textContent = headerLines(part.headers);
  const body = document.createElement("pre");
  body.className = "exchange-body";
  body.textContent = part.body == null ? "" : part.body;
  box.append(headers, body);
  for (const note of notes(part)) {
    const line = document.createElement("p");
    line.className = "muted small exchange-note";
    line.textContent = note;
    box.append(line);
  }
  return box;
}

function exchangeDetails(attempt) {
  const details = document.createElement("details");
  details.className = "exchange";
  const summary = document.createElement("summary");
  summary.textContent = "Show";
  details.append(
    summary,
    exchangePart("Request", attempt.request, "Nothing was sent.", () => []),
    exchangePart("Response", attempt.response, "No answer.", (answer) => [
      answer.truncated ? "Body cut to its first 64 KiB." : "",
      answer.headers_truncated ? "Some headers left out (too many or too long)." : "",
    ].filter(Boolean)),
  );
  return details;
}

// Runs ``start`` once the page is signed in (now, or after the sign-in form).
function whenSignedIn(start) {
  const content = $("content");
  if (apiKey() && !content.hidden) {
    start();
    return;
  }
  const observer = new MutationObserver(() => {
    if (apiKey() && !content.hidden) {
      observer.disconnect();
      start();
    }
  });
  observer.observe(content, { attributes: true, attributeFilter: ["hidden"] });
}

function jobDeliveries(jobId) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  let timer = null;
  let count = 0;

  function row(attempt) {
    const tr = document.createElement("tr");
    tr.dataset.attempt = String(attempt.attempt);
    tr.dataset.outcome = attempt.outcome;
    const cells = [
      when(attempt.at),
      attempt.event,
      attempt.outcome + (attempt.redelivery ? " (resent)" : ""),
      attempt.status_code == null ? "–" : String(attempt.status_code),
      attempt.error || "",
      exchangeDetails(attempt),
    ];
    for (const content of cells) {
      const td = document.createElement("td");
      if (content instanceof Node) td.append(content);
      else td.textContent = content;
      tr.append(td);
    }
    return tr;
  }

  async function load() {
    clearTimeout(timer);
    try {
      const answer = await api(`${path}/deliveries`);
      const state = answer.webhook.state;
      const body = $("deliveries-body");
      // What was open stays open across a reload.
      const open = new Set([...body.querySelectorAll("details[open]")]
        .map((details) => details.closest("tr").dataset.attempt));
      body.replaceChildren(...answer.deliveries.map(row));
      for (const tr of body.children) {
        if (open.has(tr.dataset.attempt)) tr.querySelector("details").open = true;
      }
      count = answer.deliveries.length;
      $("deliveries-state").textContent = `(${state})`;
      show($("deliveries-box"), state !== "none" || count > 0);
      show($("deliveries-empty"), count === 0);
      show($("redeliver"), state !== "none");
      showError($("deliveries-error"), null);
      if (!SETTLED.has(state)) timer = setTimeout(load, 2000);
    } catch (error) {
      if (!onUnauthorized(error)) showError($("deliveries-error"), error);
    }
  }

  async function redeliver() {
    $("redeliver").disabled = true;
    try {
      const done = await api(`${path}/redeliver`, { method: "POST" });
      $("redeliver-result").textContent = `Queued again (${done.webhook_id}).`;
      showError($("deliveries-error"), null);
      const before = count;
      // The new attempt shows once it is made: look again for a while.
      for (let tries = 0; tries < 20 && count <= before; tries += 1) {
        await pause(1000);
        await load();
      }
    } catch (error) {
      if (!onUnauthorized(error)) showError($("deliveries-error"), error);
    } finally {
      $("redeliver").disabled = false;
    }
  }

  $("deliveries-refresh").addEventListener("click", load);
  $("redeliver").addEventListener("click", redeliver);
  window.addEventListener("pagehide", () => clearTimeout(timer));
  whenSignedIn(load);
}

// The endpoints page's open endpoint, for endpointManagement (set by showDetail).
function markDetail(endpoint) {
  const detail = $("detail");
  detail.dataset.endpointId = endpoint.id;
  detail.dataset.enabled = String(endpoint.enabled);
}

function endpointManagement() {
  const detail = $("detail");

  function path(suffix = "") {
    return `/v1/endpoints/${encodeURIComponent(detail.dataset.endpointId)}${suffix}`;
  }

  function reset() {
    show($("manage-form"), false);
    show($("manage-delete-confirm"), false);
    show($("manage-secret-box"), false);
    $("manage-secret").textContent = "";
    $("manage-result").textContent = "";
  }

  function refreshList() {
    $("endpoints-refresh").click();  // the list, and the open endpoint with it
  }

  let shownId = null;
  let shownEnabled = null;
  new MutationObserver(() => {
    show($("manage-disable"), detail.dataset.enabled === "true");
    if (detail.dataset.endpointId !== shownId) {
      shownId = detail.dataset.endpointId;
      shownEnabled = detail.dataset.enabled;
      reset();
    } else if (detail.dataset.enabled !== shownEnabled) {
      shownEnabled = detail.dataset.enabled;
      // "Disabled." is old news once it is enabled again.
      if (shownEnabled === "true") $("manage-result").textContent = "";
    }
  }).observe(detail, { attributes: true, attributeFilter: ["data-endpoint-id", "data-enabled"] });

  $("manage-edit").addEventListener("click", () => act($("manage-edit"), async () => {
    const endpoint = await api(path());
    $("manage-url").value = endpoint.url;
    $("manage-events").value = endpoint.event_types.join(", ");
    $("manage-description").value = endpoint.description || "";
    show($("manage-form"), true);
    $("manage-url").focus();
  }));
  $("manage-cancel").addEventListener("click", () => show($("manage-form"), false));
  $("manage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("manage-save"), async () => {
      const types = $("manage-events").value.split(",").map((t) => t.trim()).filter(Boolean);
      await api(path(), {
        method: "PATCH",
        body: {
          url: $("manage-url").value.trim(),
          description: $("manage-description").value,
          event_types: types,
        },
      });
      show($("manage-form"), false);
      $("manage-result").textContent = "Saved.";
      refreshList();
    });
  });
  $("manage-rotate").addEventListener("click", () => act($("manage-rotate"), async () => {
    const rotated = await api(path("/rotate-secret"), { method: "POST" });
    $("manage-secret").textContent = rotated.webhook_secret || rotated.public_key || "";
    show($("manage-secret-box"), true);
    $("manage-result").textContent =
      `The previous one still signs for ${rotated.previous_secret_valid_for} s.`;
  }));
  $("manage-disable").addEventListener("click", () => act($("manage-disable"), async () => {
    await api(path(), { method: "PATCH", body: { enabled: false } });
    $("manage-result").textContent = "Disabled.";
    refreshList();
  }));
  $("manage-delete").addEventListener("click", () => show($("manage-delete-confirm"), true));
  $("manage-delete-confirm").addEventListener("click", () => act(
    $("manage-delete-confirm"),
    async () => {
      await api(path(), { method: "DELETE" });
      show(detail, false);
      delete detail.dataset.endpointId;
      refreshList();
    },
  ));
}

// ------------------------------------------------------------------ entry point

// ------------------------------------------------------------------ audit log (admins)

function auditPage() {
  function row(entry) {
    const tr = document.createElement("tr");
    tr.dataset.auditId = String(entry.id);
    const details = Object.keys(entry.details).length ? JSON.stringify(entry.details) : "";
    for (const text of [when(entry.at), entry.actor, entry.action, entry.target, details]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  const load = pagedList({
    path: "/v1/audit", key: "entries", body: "audit-body", more: "audit-more",
    empty: "audit-empty", error: "audit-error", row, limit: 50,
  });

  $("audit-refresh").addEventListener("click", () => load(false));
  $("audit-more").addEventListener("click", () => load(true));
  requireSignIn(() => load(false));
}

const PAGES = {
  job: () => jobPage(document.body.dataset.jobId),
  endpoints: endpointsPage,
  audit: auditPage,
};
PAGES.dashboard = dashboardPage;
PAGES.batch = () => batchPage(document.body.dataset.batchId);
(PAGES[document.body.dataset.page] || jobsPage)();

// Views added beside a page's own (each starts itself once signed in).
const EXTRAS = {
  job: () => jobDeliveries(document.body.dataset.jobId),
  endpoints: endpointManagement,
};
EXTRAS[document.body.dataset.page]?.();
