/**
 * The kvtwist v1 API over fetch(): every call carries the bearer token kept
 * in sessionStorage, and every non-2xx answer becomes an ApiError holding the
 * problem+json document (detail, code, conflicts, ...).
 */

const TOKEN_KEY = "kvtwist.token";

/* The page lives at <base>/ui/, the API at <base>/v1/: resolving against this
   module's own URL keeps the page working behind a path prefix. */
const API_BASE = new URL("../", import.meta.url);

const unauthorizedHandlers = [];

/** The token entered for this tab ("" when none). */
export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** Keep `token` for this tab only (sessionStorage); "" forgets it. */
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Call `handler(error)` whenever the server answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandlers.push(handler);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** The URL path of a key (a key may contain "/": it is sent as %2F). */
export function keyPath(key) {
  return "v1/kv/" + encodeURIComponent(key);
}

/**
 * One request; resolves to the Response when it is 2xx (or in `accept`),
 * rejects with an ApiError otherwise.
 */
export async function call(method, path, { body, headers = {}, params, signal, accept = [] } = {}) {
  const url = new URL(path, API_BASE);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const sent = new Headers(headers);
  const token = getToken();
  if (token) sent.set("Authorization", "Bearer " + token);
  let response;
  try {
    response = await fetch(url, { method, body, headers: sent, signal, cache: "no-store", credentials: "omit" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { detail: `the server cannot be reached (${error.message})`, code: "network" });
  }
  if (response.ok || accept.includes(response.status)) return response;
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = { detail: `${response.status} ${response.statusText}` };
  }
  const error = new ApiError(response.status, problem);
  if (response.status === 401) unauthorizedHandlers.forEach((handler) => handler(error));
  throw error;
}

/** One page of keys: {revision, items, next}. */
export async function listKeys(prefix, limit, after) {
  const response = await call("GET", "v1/kv/", { params: { prefix, limit, after } });
  return response.json();
}

/**
 * One page of key names only: {revision, keys, next}. With `separator`
 * ("/"), the names below the next separator roll up into one folder name
 * ending with it.
 */
export async function listNames(prefix, { limit, after, separator } = {}) {
  const response = await call("GET", "v1/kv/", { params: { prefix, keys: 1, limit, after, separator } });
  return response.json();
}

/**
 * Walk the key names under `prefix` page by page (the largest page the
 * server gives), calling `visit(names)` for each, until the end or until
 * `cap` names have been seen. Resolves to {seen, complete, revision} (the
 * revision of the first page: the walk is not one snapshot).
 */
export async function walkNames(prefix, cap, visit = () => {}) {
  let after = null;
  let seen = 0;
  let revision = null;
  for (;;) {
    const page = await listNames(prefix, { limit: Math.min(WALK_PAGE, cap - seen), after });
    if (revision === null) revision = page.revision;
    seen += page.keys.length;
    visit(page.keys);
    if (page.next === null) return { seen, complete: true, revision };
    if (seen >= cap) return { seen, complete: false, revision };
    after = page.next;
  }
}

/** Keys per page of a walk: the server's default largest page. */
const WALK_PAGE = 1000;

/**
 * Delete every key under `prefix` in one commit: {deleted, revision}. The
 * empty prefix (every key) must be asked for by name: `everything`.
 */
export async function deletePrefix(prefix, { everything = false } = {}) {
  if (!prefix && !everything) throw new Error("refusing to delete every key without being asked to");
  const params = prefix ? { prefix } : { all: 1 };
  return (await call("DELETE", "v1/kv/", { params })).json();
}

/** A key as a read answered it: bytes, content type, revisions, version, expiry. */
async function entryOf(key, response) {
  return {
    key,
    bytes: new Uint8Array(await response.arrayBuffer()),
    contentType: response.headers.get("Content-Type") || "application/octet-stream",
    revision: revisionOf(response.headers.get("ETag")),
    createRevision: Number(response.headers.get("KV-Create-Revision")),
    version: Number(response.headers.get("KV-Version")),
    expires: response.headers.get("KV-Expires"),
  };
}

/** A committed key: its bytes, content type, revision (ETag) and expiry. */
export async function getKey(key) {
  return entryOf(key, await call("GET", keyPath(key)));
}

/**
 * The key as it was at `revision` (the store's history), or null when it
 * did not exist then. A revision older than the history kept rejects with
 * the ApiError 410 `compacted`.
 */
export async function getKeyAt(key, revision) {
  const response = await call("GET", keyPath(key), { params: { revision }, accept: [404] });
  return response.status === 404 ? null : entryOf(key, response);
}

/** The revision an ETag names ("7" -> 7), or null. */
export function revisionOf(etag) {
  const match = /^"(\d+)"$/.exec(etag || "");
  return match ? Number(match[1]) : null;
}

/* Write preconditions: the revision the user saw (If-Match), or "must not
   exist yet" for a new key (If-None-Match: *), so that nobody's concurrent
   change is overwritten silently. */
function writeHeaders({ contentType, revision, create }) {
  const headers = {};
  if (contentType) headers["Content-Type"] = contentType;
  if (create) headers["If-None-Match"] = "*";
  else if (revision !== null && revision !== undefined) headers["If-Match"] = `"${revision}"`;
  return headers;
}

/** Write a key now; resolves to its new revision. */
export async function putKey(key, body, options) {
  const response = await call("PUT", keyPath(key), {
    body, headers: writeHeaders(options), params: { ttl: options.ttl },
  });
  return revisionOf(response.headers.get("ETag"));
}

/** Delete a key now, if it is still at `revision`. */
export async function deleteKey(key, revision) {
  await call("DELETE", keyPath(key), { headers: writeHeaders({ revision }) });
}

/** Open a transaction; resolves to its id. */
export async function beginTxn() {
  const response = await call("POST", "v1/txn");
  return (await response.json()).id;
}

function txnPath(id, rest = "") {
  return "v1/txn/" + encodeURIComponent(id) + rest;
}

/** Stage a write in transaction `id` (checked against `revision` at commit). */
export async function stagePut(id, key, body, options) {
  await call("PUT", txnPath(id, "/kv/" + encodeURIComponent(key)), {
    body, headers: writeHeaders(options), params: { ttl: options.ttl },
  });
}

/** Stage a delete in transaction `id`. */
export async function stageDelete(id, key, revision) {
  await call("DELETE", txnPath(id, "/kv/" + encodeURIComponent(key)), {
    headers: writeHeaders({ revision }),
  });
}

/** What transaction `id` has staged: {id, ops, ...}. */
export async function describeTxn(id) {
  return (await call("GET", txnPath(id))).json();
}

/** Commit transaction `id`: {revision, ops}, or an ApiError 409 with conflicts. */
export async function commitTxn(id) {
  return (await call("POST", txnPath(id, "/commit"))).json();
}

/** Abort transaction `id`. */
export async function abortTxn(id) {
  await call("DELETE", txnPath(id));
}

/** The limits in force (GET /v1/limits). */
export async function getLimits() {
  return (await call("GET", "v1/limits")).json();
}

/** Apply `ops` in one POST /v1/batch (one atomic commit): {revision, results}. */
export async function batch(ops) {
  const response = await call("POST", "v1/batch", {
    body: JSON.stringify({ ops }), headers: { "Content-Type": "application/json" },
  });
  return response.json();
}

/** The same-origin URL of the snapshot of `prefix` (JSON Lines). */
export function snapshotUrl(prefix) {
  const url = new URL("v1/snapshot", API_BASE);
  if (prefix) url.searchParams.set("prefix", prefix);
  return url.href;
}

/** The snapshot of `prefix`, read whole through fetch (with the token), as a Blob. */
export async function fetchSnapshot(prefix) {
  return (await call("GET", "v1/snapshot", { params: { prefix } })).blob();
}

/** The leases held (GET /v1/lease): {leases: [{id, ttl, remaining, keys}], more}. */
export async function listLeases(limit) {
  return (await call("GET", "v1/lease", { params: { limit } })).json();
}

/** Revoke lease `id`: its keys are deleted in one commit. */
export async function revokeLease(id) {
  await call("DELETE", "v1/lease/" + encodeURIComponent(id));
}
