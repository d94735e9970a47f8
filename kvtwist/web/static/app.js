/**
 * The kvtwist admin page: browse keys as folders at "/" or flat by prefix,
 * count them, find them by a piece of their name, delete a whole prefix
 * (after typing it back), export the prefix's snapshot and import one,
 * view and edit values with If-Match (a concurrent
 * change is a clear conflict, never a silent overwrite; the open key
 * follows the live feed and shows what someone else changed as a diff),
 * create and delete keys with a TTL, list a key's past versions and
 * restore one, stage edits in a multi-request transaction, and follow live
 * changes; list the leases held (their keys marked), and revoke one.
 *
 * Everything on screen is built with textContent, never innerHTML: keys and
 * values are user data.
 */

import * as api from "./api.js";
import { Watcher } from "./watch.js";
import { foldUnchanged, lineDiff } from "./diff.js";
import { chunkOps, parseBackup, setOp } from "./transfer.js";

const $ = (id) => document.getElementById(id);

/** How many entries the live log keeps (oldest dropped first). */
const LOG_LIMIT = 200;
/** Live events arrive in bursts (one per key of a commit): refresh once. */
const REFRESH_DELAY_MS = 250;
/** The total count walks at most this many key names (then says "at least"). */
const COUNT_CAP = 10000;
/** After live changes, the total is counted again at most this often. */
const COUNT_EVERY_MS = 5000;
/** A search looks at most at this many key names under the prefix... */
const SEARCH_CAP = 10000;
/** ...and lists at most this many of the matches. */
const MATCH_LIMIT = 200;
/** The folder separator of the tree view. */
const SEPARATOR = "/";
/** What must be typed to delete every key (the empty prefix). */
const EVERYTHING = "delete everything";

const state = {
  prefix: "",
  tree: true, // folders at SEPARATOR, or every key under the prefix
  find: "", // a search in progress or shown, instead of the pages
  count: null, // {prefix, seen, complete} of the last count
  confirming: null, // the prefix a delete waits confirmation for
  pageSize: 20,
  cursors: [null], // the `after` of each page visited so far
  page: 0,
  next: null,
  editing: null, // {key, revision, contentType, binary, text} or null for a new key
  busyKey: null, // a key whose direct write is in flight (its own events are expected)
  txn: null,
  leases: [], // the leases held, each with its deadline (ms) as last listed
  leaseOfKey: new Map(), // key -> its lease, from that listing
};

// ---------------------------------------------------------------- helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

/** Show a message box: kind is ok | error | warn; `items` become a list. */
function say(box, kind, text, items = []) {
  box.replaceChildren(el("span", { text }));
  if (items.length) box.append(el("ul", {}, ...items.map((item) => el("li", { text: item }))));
  box.className = "message " + kind;
  box.hidden = false;
}

function quiet(box) {
  box.hidden = true;
  box.replaceChildren();
}

function isJsonType(contentType) {
  const media = (contentType || "").split(";")[0].trim().toLowerCase();
  return media === "application/json" || media.endsWith("+json");
}

function formatBytes(size) {
  return size < 1024 ? `${size} B` : `${(size / 1024).toFixed(1)} KiB`;
}

function plural(count, word, many = word + "s") {
  return `${count.toLocaleString("en")} ${count === 1 ? word : many}`;
}

function formatExpiry(expires) {
  if (!expires) return "";
  const seconds = Math.round((Date.parse(expires) - Date.now()) / 1000);
  const clock = new Date(expires).toLocaleTimeString();
  return seconds > 0 ? `${clock} (in ${seconds} s)` : `${clock} (due)`;
}

function base64(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

/** A value as editable text: pretty JSON, UTF-8 text, or base64 (read-only). */
function present(bytes, contentType) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return { text: base64(bytes), binary: true };
  }
  if (isJsonType(contentType)) {
    try {
      return { text: JSON.stringify(JSON.parse(text), null, 2), binary: false };
    } catch {
      // Stored with a JSON type but not JSON: show it as it is.
    }
  }
  return { text, binary: false };
}

/** What failed, in words; 401 is also announced by the auth prompt. */
function describeError(error) {
  if (!(error instanceof api.ApiError)) return String(error);
  if (error.status === 401) return "The server needs a valid access token (see above).";
  if (error.status === 403) return `Not allowed with this token: ${error.message}`;
  return error.message;
}

// ------------------------------------------------------------------ token

function showTokenState() {
  const set = api.getToken() !== "";
  $("token-state").textContent = set ? "token set for this tab" : "";
  $("token").placeholder = set ? "\u2022\u2022\u2022\u2022\u2022\u2022 (set)" : "none (auth off)";
  $("token-forget").disabled = !set;
}

api.onUnauthorized((error) => {
  const prompt = $("auth-prompt");
  $("auth-detail").textContent = api.getToken()
    ? `The token was refused (${error.message}).`
    : "";
  if (prompt.hidden) {
    prompt.hidden = false;
    $("token").focus();
  }
});

function useToken(token) {
  api.setToken(token);
  $("token").value = "";
  $("auth-prompt").hidden = true;
  showTokenState();
  loadPage();
  loadLeases();
  restartLive();
  followOpenKey();
}

// ---------------------------------------------------------------- listing

function where(prefix) {
  return prefix ? `under \u201c${prefix}\u201d` : "in all";
}

/** A rolled-up name of the tree view (a key named like a folder lists inside it). */
function isFolder(name) {
  return name.endsWith(SEPARATOR) && name !== state.prefix;
}

let pageGeneration = 0;

/**
 * Show the page again; `count` the total "now", "soon" (after live
 * changes) or "keep" it (another page of the same listing).
 */
async function loadPage({ count = "now" } = {}) {
  renderCrumbs();
  if (count === "now") countKeys();
  else if (count === "soon") countSoon();
  // Only the latest load may draw: an earlier one answering late would
  // show another prefix, page or search.
  const mine = ++pageGeneration;
  if (state.find) {
    await runFind(mine);
    return;
  }
  const status = $("list-status");
  const after = state.cursors[state.page];
  try {
    if (state.tree) {
      const page = await api.listNames(state.prefix, { limit: state.pageSize, after, separator: SEPARATOR });
      if (mine !== pageGeneration) return;
      state.next = page.next;
      renderNames(page.keys, true);
      const folders = page.keys.filter(isFolder).length;
      const parts = [plural(page.keys.length - folders, "key")];
      if (folders) parts.unshift(plural(folders, "folder"));
      status.textContent = `This page: ${parts.join(", ")} at revision ${page.revision}`;
    } else {
      const page = await api.listKeys(state.prefix, state.pageSize, after);
      if (mine !== pageGeneration) return;
      state.next = page.next;
      renderRows(page.items);
      status.textContent = `This page: ${plural(page.items.length, "key")} at revision ${page.revision}`;
    }
  } catch (error) {
    if (mine !== pageGeneration) return;
    state.next = null;
    renderRows([]);
    status.textContent = "Could not list keys: " + describeError(error);
  }
  showPager(true);
}

function showPager(paging) {
  $("page-label").textContent = paging ? `Page ${state.page + 1}` : "";
  $("page-next").disabled = !paging || state.next === null;
  $("page-prev").disabled = !paging || state.page === 0;
  $("page-first").disabled = !paging || state.page === 0;
}

let countGeneration = 0;
let countedAt = 0;
let countTimer = null;

/**
 * Recount after live changes at most every COUNT_EVERY_MS: each count walks
 * up to COUNT_CAP names, and a busy prefix changes many times a second.
 */
function countSoon() {
  if (countTimer !== null) return;
  const wait = Math.max(0, countedAt + COUNT_EVERY_MS - Date.now());
  countTimer = setTimeout(countKeys, wait);
}

/**
 * The real number of keys under the prefix (a page's count is not it):
 * walk the names, up to COUNT_CAP, and say "at least" past that.
 */
async function countKeys() {
  const mine = ++countGeneration;
  clearTimeout(countTimer);
  countTimer = null;
  countedAt = Date.now();
  const prefix = state.prefix;
  const box = $("key-count");
  try {
    const walk = await api.walkNames(prefix, COUNT_CAP);
    if (mine !== countGeneration) return;
    state.count = { prefix, ...walk };
    // With a token, a listing (and so the count) skips keys it may not read.
    const readable = api.getToken() ? " that this token may read" : "";
    box.textContent = walk.complete
      ? `${plural(walk.seen, "key")} ${where(prefix)}${readable}`
      : `At least ${plural(walk.seen, "key")} ${where(prefix)}${readable} (counting stops there)`;
  } catch (error) {
    if (mine !== countGeneration) return;
    state.count = null;
    box.textContent = "Could not count keys: " + describeError(error);
  }
}

function keyRow(key, label) {
  const selected = state.editing && state.editing.key === key;
  return el(
    "tr",
    { "data-key": key, class: selected ? "selected" : "" },
    el("td", { colspan: "4" }, el("button", { type: "button", class: "key", text: label, onclick: () => openKey(key) })),
  );
}

/** Names only: folders open the folder, keys open the key. */
function renderNames(names, relative) {
  const rows = names.map((name) => {
    const label = relative ? name.slice(state.prefix.length) || name : name;
    if (!isFolder(name) || !relative) return keyRow(name, label);
    return el(
      "tr",
      { "data-folder": name, class: "folder" },
      el("td", { colspan: "4" }, el("button", { type: "button", class: "folder", text: label, onclick: () => listFrom(name) })),
    );
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No keys here." })));
  $("key-table").classList.add("names");
  $("key-rows").replaceChildren(...rows);
  markLeases();
}

function renderRows(items) {
  $("key-table").classList.remove("names");
  const rows = items.map((item) =>
    el(
      "tr",
      { "data-key": item.key, class: state.editing && state.editing.key === item.key ? "selected" : "" },
      el("td", {}, el("button", { type: "button", class: "key", text: item.key, onclick: () => openKey(item.key) })),
      el("td", { class: "num", text: String(item.version) }),
      el("td", { class: "num", text: formatBytes(item.size) }),
      el("td", { text: formatExpiry(item.expires) }),
    ),
  );
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No keys here." })));
  $("key-rows").replaceChildren(...rows);
  markLeases();
}

/** The path to the prefix, one button per folder level. */
function renderCrumbs() {
  const crumbs = [el("button", { type: "button", class: "crumb", text: "(root)", "data-prefix": "", onclick: () => listFrom("") })];
  let end = state.prefix.indexOf(SEPARATOR);
  while (end >= 0) {
    const prefix = state.prefix.slice(0, end + 1);
    const label = prefix.slice(prefix.lastIndexOf(SEPARATOR, end - 1) + 1);
    crumbs.push(el("button", { type: "button", class: "crumb", text: label, "data-prefix": prefix, onclick: () => listFrom(prefix) }));
    end = state.prefix.indexOf(SEPARATOR, end + 1);
  }
  const rest = state.prefix.slice(state.prefix.lastIndexOf(SEPARATOR) + 1);
  if (rest) crumbs.push(el("span", { class: "muted", text: rest + "\u2026" }));
  crumbs[crumbs.length - 1].disabled = crumbs.length > 1 && !rest;
  $("crumbs").replaceChildren(...crumbs);
}

/** Key names under the prefix containing the search text (any case), bounded. */
async function runFind(mine) {
  const needle = state.find.toLowerCase();
  const prefix = state.prefix;
  const status = $("list-status");
  const matches = [];
  let total = 0;
  state.next = null;
  showPager(false);
  status.textContent = `Searching key names ${where(prefix)} for \u201c${state.find}\u201d\u2026`;
  try {
    const walk = await api.walkNames(prefix, SEARCH_CAP, (names) => {
      for (const name of names) {
        if (!name.toLowerCase().includes(needle)) continue;
        total += 1;
        if (matches.length < MATCH_LIMIT) matches.push(name);
      }
    });
    if (mine !== pageGeneration) return;
    renderNames(matches, false);
    const searched = walk.complete
      ? `searched all ${plural(walk.seen, "key")}`
      : `searched only the first ${plural(walk.seen, "key")} (the rest were not searched)`;
    const shown = total > matches.length ? `; showing the first ${matches.length}` : "";
    status.textContent = `${plural(total, "match", "matches")} for \u201c${state.find}\u201d ${where(prefix)}; ${searched}${shown}`;
  } catch (error) {
    if (mine !== pageGeneration) return;
    renderRows([]);
    status.textContent = "Could not search: " + describeError(error);
  }
}

function find(text) {
  state.find = text;
  loadPage();
}

function listFrom(prefix) {
  state.prefix = prefix;
  $("prefix").value = prefix;
  state.pageSize = Number($("page-size").value);
  state.cursors = [null];
  state.page = 0;
  state.find = "";
  $("find").value = "";
  cancelDeletePrefix();
  const hash = new URLSearchParams();
  if (prefix) hash.set("prefix", prefix);
  if (!state.tree) hash.set("view", "flat");
  history.replaceState(null, "", hash.toString() ? "#" + hash : location.pathname + location.search);
  loadPage();
  restartLive();
}

let refreshTimer = null;
let refreshRecounts = false;

/**
 * Show the list again shortly (changes come in bursts). After a live change
 * (`live`), a search shown stays as it is (it walks up to SEARCH_CAP names:
 * Find again to refresh it) and the count is refreshed at its own pace.
 */
function refreshSoon({ live = false } = {}) {
  if (live && state.find) return;
  refreshRecounts = refreshRecounts || !live;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    const count = refreshRecounts ? "now" : "soon";
    refreshRecounts = false;
    loadPage({ count });
    loadLeases();
  }, REFRESH_DELAY_MS);
}

// ---------------------------------------------------------- prefix delete

/** What must be typed to delete everything under `prefix`. */
function confirmWord(prefix) {
  return prefix || EVERYTHING;
}

/** Ask first: the prefix (or "delete everything") must be typed back. */
function askDeletePrefix() {
  const prefix = state.prefix;
  const counted = state.count && state.count.prefix === prefix
    ? (state.count.complete ? plural(state.count.seen, "key") : `at least ${plural(state.count.seen, "key")}`) + " when last counted"
    : "not counted yet";
  $("confirm-question").textContent = prefix
    ? `Delete every key under \u201c${prefix}\u201d (${counted}) in one commit? This cannot be undone.`
    : `Delete EVERY key on this server (${counted}) in one commit? This cannot be undone.`;
  $("confirm-word").textContent = confirmWord(prefix);
  $("confirm-text").value = "";
  $("confirm-delete").disabled = true;
  state.confirming = prefix;
  quiet($("keys-message"));
  $("prefix-confirm").hidden = false;
  $("confirm-text").focus();
}

function cancelDeletePrefix() {
  state.confirming = null;
  $("prefix-confirm").hidden = true;
}

async function deletePrefixNow() {
  const prefix = state.confirming;
  if (prefix === null || $("confirm-text").value !== confirmWord(prefix)) return;
  cancelDeletePrefix();
  try {
    const result = await api.deletePrefix(prefix, { everything: prefix === "" });
    say($("keys-message"), "ok", `Deleted ${plural(result.deleted, "key")} ${where(prefix)} at revision ${result.revision}.`);
  } catch (error) {
    const text = error.status === 413
      ? `Nothing deleted: ${where(prefix)} holds ${error.problem.size} keys, more than one request may delete (${error.problem.limit}). Delete smaller prefixes.`
      : describeError(error);
    say($("keys-message"), "error", text);
  }
  refreshSoon();
}

// ----------------------------------------------------------------- leases

/** The Leases panel lists at most this many leases (the soonest to expire). */
const LEASE_LIMIT = 100;
/** Keys named per lease in the panel; the rest are counted. */
const LEASE_KEYS_SHOWN = 5;

let leaseGeneration = 0;

function secondsLeft(lease) {
  return Math.max(0, Math.round((lease.deadline - Date.now()) / 1000));
}

/**
 * List the leases held (GET /v1/lease) and mark their keys. The times
 * left then count down here; a keepalive makes no event, so a renewed
 * lease shows its new time at the next listing (Refresh, a change, or when
 * a lease's time seems to be up).
 */
async function loadLeases() {
  const mine = ++leaseGeneration;
  const status = $("lease-status");
  let listing;
  try {
    listing = await api.listLeases(LEASE_LIMIT);
  } catch (error) {
    if (mine !== leaseGeneration) return;
    state.leases = [];
    status.textContent =
      error.status === 501 ? "This store cannot list its leases."
        : error.status === 403 ? "Listing leases needs a token that may write."
          : "Could not list leases: " + describeError(error);
    showLeases();
    return;
  }
  if (mine !== leaseGeneration) return;
  const now = Date.now();
  state.leases = listing.leases.map((lease) => ({ ...lease, deadline: now + lease.remaining * 1000 }));
  const more = listing.more ? ` (the ${LEASE_LIMIT} expiring soonest are shown)` : "";
  status.textContent = state.leases.length ? `${plural(state.leases.length, "lease")} held${more}` : "No leases held.";
  showLeases();
}

function leaseKeysText(keys) {
  if (!keys.length) return "(none)";
  const shown = keys.slice(0, LEASE_KEYS_SHOWN).join(", ");
  return keys.length > LEASE_KEYS_SHOWN ? `${shown} and ${keys.length - LEASE_KEYS_SHOWN} more` : shown;
}

function showLeases() {
  state.leaseOfKey = new Map();
  for (const lease of state.leases) for (const key of lease.keys) state.leaseOfKey.set(key, lease);
  $("lease-rows").replaceChildren(
    ...state.leases.map((lease) =>
      el(
        "tr",
        { "data-lease": String(lease.id) },
        el("td", { text: String(lease.id) }),
        el("td", { class: "num", text: `${lease.ttl} s` }),
        el("td", { class: "num left", text: `${secondsLeft(lease)} s` }),
        el("td", { text: leaseKeysText(lease.keys) }),
        el("td", {}, el("button", { type: "button", class: "danger", text: "Revoke", onclick: () => revokeLease(lease) })),
      ),
    ),
  );
  markLeases();
}

/** Mark the listed keys that are on a lease, and say so in the editor. */
function markLeases() {
  for (const row of $("key-rows").querySelectorAll("tr[data-key]")) {
    const lease = state.leaseOfKey.get(row.dataset.key);
    const old = row.querySelector(".badge");
    if (old) old.remove();
    if (lease) {
      row.dataset.lease = String(lease.id);
      row.firstElementChild.append(el("span", { class: "badge", title: `attached to lease ${lease.id}`, text: `lease ${lease.id}` }));
    } else {
      delete row.dataset.lease;
    }
  }
  const line = $("edit-lease");
  const lease = state.editing ? state.leaseOfKey.get(state.editing.key) : null;
  line.hidden = !lease;
  line.textContent = lease
    ? `On lease ${lease.id}, ${secondsLeft(lease)} s left: the key is deleted when the lease is revoked or runs out. Saving here detaches it.`
    : "";
}

/** Count the times left down each second; list again when one seems up. */
function tickLeases() {
  for (const row of $("lease-rows").children) {
    const lease = state.leases.find((item) => String(item.id) === row.dataset.lease);
    if (lease) row.querySelector(".left").textContent = `${secondsLeft(lease)} s`;
  }
  if (state.editing && state.leaseOfKey.has(state.editing.key)) markLeases();
  if (state.leases.some((lease) => secondsLeft(lease) === 0)) loadLeases();
}

async function revokeLease(lease) {
  const keys = lease.keys.length ? `its ${plural(lease.keys.length, "key")} (${leaseKeysText(lease.keys)})` : "its keys";
  if (!window.confirm(`Revoke lease ${lease.id}? ${keys[0].toUpperCase() + keys.slice(1)} will be deleted in one commit.`)) return;
  const box = $("lease-message");
  try {
    await api.revokeLease(lease.id);
    say(box, "ok", `Revoked lease ${lease.id}; ${keys} deleted.`);
  } catch (error) {
    say(box, "error", error.status === 404 ? `Lease ${lease.id} had already ended (revoked or run out).` : describeError(error));
  }
  loadLeases();
  refreshSoon();
}

// ---------------------------------------------------------- export/import

/** A file name for the snapshot of `prefix`, e.g. kvtwist-app-2026-12-07T06-30-00.jsonl. */
function snapshotName(prefix) {
  const what = prefix.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "") || "all";
  const when = new Date().toISOString().slice(0, 19).replace(/:/g, "-");
  return `kvtwist-${what}-${when}.jsonl`;
}

function download(href, name) {
  const link = el("a", { href, download: name, hidden: "" });
  document.body.append(link);
  link.click();
  link.remove();
}

/**
 * Download the snapshot of the prefix. Without a token the browser reads
 * the same-origin URL itself (streamed to disk); a token cannot ride on a
 * plain link, so then the page fetches it and hands over a Blob.
 */
async function exportSnapshot() {
  const prefix = state.prefix;
  const name = snapshotName(prefix);
  const status = $("import-status");
  if (!api.getToken()) {
    download(api.snapshotUrl(prefix), name);
    status.textContent = `Exporting the snapshot ${where(prefix)} as ${name}.`;
    return;
  }
  status.textContent = `Reading the snapshot ${where(prefix)}…`;
  try {
    const blob = await api.fetchSnapshot(prefix);
    const url = URL.createObjectURL(blob);
    download(url, name);
    // The download has its own copy once started.
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = `Exported the snapshot ${where(prefix)} as ${name} (${formatBytes(blob.size)}).`;
  } catch (error) {
    status.textContent = "Could not export: " + describeError(error);
  }
}

let importing = null; // {name, ops, expired, header} waiting for confirmation

async function chooseImport() {
  const input = $("import-file");
  const file = input.files[0];
  input.value = "";
  cancelImport();
  if (!file) return;
  const status = $("import-status");
  let parsed;
  try {
    parsed = parseBackup(await file.text());
  } catch (error) {
    status.textContent = `Not imported: “${file.name}” is not a snapshot or dump (${error.message}).`;
    return;
  }
  const now = Date.now();
  const ops = parsed.records.map((record) => setOp(record, now)).filter((op) => op !== null);
  const expired = parsed.records.length - ops.length;
  importing = { name: file.name, ops, expired };
  const from = parsed.header
    ? `a snapshot ${where(parsed.header.prefix)} at revision ${parsed.header.revision}`
    : "a dump";
  const skipped = expired ? ` ${plural(expired, "key")} whose expiry has passed will be skipped.` : "";
  $("import-question").textContent =
    `Write ${plural(ops.length, "key")} from “${file.name}” (${from})? Keys of the same names are overwritten; ` +
    `other keys are left alone. Each request is one commit.${skipped}`;
  status.textContent = "";
  $("import-confirm").hidden = false;
  $("import-go").focus();
}

function cancelImport() {
  importing = null;
  $("import-confirm").hidden = true;
}

/** Write the chosen file's keys in batches that fit the server's limits. */
async function runImport() {
  const job = importing;
  if (!job) return;
  cancelImport();
  const status = $("import-status");
  let done = 0;
  try {
    const limits = await api.getLimits();
    const chunks = chunkOps(job.ops, {
      maxOps: Math.min(limits.max_batch_ops, limits.max_keys_per_request),
      maxBytes: limits.max_body,
    });
    for (const [index, ops] of chunks.entries()) {
      status.textContent = `Importing “${job.name}”: ${done.toLocaleString("en")} of ${plural(job.ops.length, "key")} written (request ${index + 1} of ${chunks.length})…`;
      await api.batch(ops);
      done += ops.length;
    }
    const skipped = job.expired ? `; ${plural(job.expired, "expired key")} skipped` : "";
    status.textContent = `Imported ${plural(done, "key")} from “${job.name}”${skipped}.`;
  } catch (error) {
    const why = error.status === 413 ? `a request was too large for the server (${error.message})` : describeError(error);
    status.textContent = `Import stopped after ${plural(done, "key")} of ${job.ops.length.toLocaleString("en")}: ${why}. The keys written stay written.`;
  }
  refreshSoon();
}

// ----------------------------------------------------------------- editor

function editorMessage() {
  return $("editor-message");
}

function setEditing(editing) {
  // The history listed belongs to the key and revision opened.
  const same = editing && state.editing && editing.key === state.editing.key && editing.revision === state.editing.revision;
  if (!same) closeHistory();
  state.editing = editing;
  const key = $("edit-key");
  key.readOnly = editing !== null;
  $("delete").disabled = editing === null;
  $("reload").disabled = editing === null;
  $("history-open").disabled = editing === null;
  $("save").disabled = editing !== null && editing.binary;
  $("edit-value").readOnly = editing !== null && editing.binary;
  updateTxnButtons();
  for (const row of $("key-rows").children) {
    row.classList.toggle("selected", editing !== null && row.dataset.key === editing.key);
  }
  markLeases();
}

function newKey() {
  keyWatcher.stop();
  hideDiff();
  setEditing(null);
  $("edit-key").value = state.prefix;
  $("edit-type").value = "application/json";
  $("edit-ttl").value = "";
  $("edit-value").value = "";
  $("edit-meta").textContent = "A new key: it is created only if it does not exist yet.";
  quiet(editorMessage());
  $("edit-key").focus();
}

async function openKey(key, { keepMessage = false } = {}) {
  if (!keepMessage) quiet(editorMessage());
  hideDiff();
  let entry;
  try {
    entry = await api.getKey(key);
  } catch (error) {
    if (error.status === 404) {
      say(editorMessage(), "warn", `\u201c${key}\u201d does not exist (any more).`);
      refreshSoon();
    } else {
      say(editorMessage(), "error", describeError(error));
    }
    return;
  }
  const shown = present(entry.bytes, entry.contentType);
  $("edit-key").value = key;
  $("edit-type").value = entry.contentType;
  $("edit-value").value = shown.text;
  // Keep the key's TTL on save: prefill what is left of it.
  const left = entry.expires ? Math.ceil((Date.parse(entry.expires) - Date.now()) / 1000) : 0;
  $("edit-ttl").value = left > 0 ? String(left) : "";
  const meta = [
    `revision ${entry.revision}`,
    `version ${entry.version}`,
    formatBytes(entry.bytes.length),
    entry.expires ? `expires ${formatExpiry(entry.expires)}` : "no TTL",
  ];
  $("edit-meta").textContent = meta.join(" \u00b7 ");
  setEditing({ key, revision: entry.revision, contentType: entry.contentType, binary: shown.binary, text: shown.text });
  followOpenKey();
  if (shown.binary) say(editorMessage(), "warn", "A binary value, shown as base64: it cannot be edited here.");
}

/** The editor's contents as a write, or null (after saying why) when invalid. */
function draft() {
  const key = $("edit-key").value;
  const contentType = $("edit-type").value.trim() || "application/octet-stream";
  const body = $("edit-value").value;
  const ttl = $("edit-ttl").value.trim();
  if (!key) {
    say(editorMessage(), "error", "Enter a key.");
    return null;
  }
  if (isJsonType(contentType)) {
    try {
      JSON.parse(body);
    } catch (error) {
      say(editorMessage(), "error", `Not saved: the value is not valid JSON (${error.message}).`);
      return null;
    }
  }
  if (ttl && !(Number(ttl) > 0)) {
    say(editorMessage(), "error", "The TTL must be a number of seconds above 0 (or empty for none).");
    return null;
  }
  const create = state.editing === null;
  return { key, body, contentType, ttl, create, revision: create ? null : state.editing.revision };
}

/** The 412 of a conditional write, in words. */
function conflictText(action, write, error) {
  const now = error.problem.current_revision;
  if (write.create) {
    return `Not ${action}: \u201c${write.key}\u201d already exists (revision ${now}). Open it from the list to edit it.`;
  }
  const since = now ? `it is now at revision ${now}` : "it has since been deleted";
  return (
    `Conflict: not ${action}. \u201c${write.key}\u201d was changed by someone else after you opened it ` +
    `(you had revision ${write.revision}; ${since}). Reload to see the current value; your text stays in the editor until then.`
  );
}

async function save() {
  const write = draft();
  if (!write) return;
  state.busyKey = write.key;
  try {
    const revision = await api.putKey(write.key, write.body, write);
    setEditing({ key: write.key, revision, contentType: write.contentType, binary: false,
      text: present(new TextEncoder().encode(write.body), write.contentType).text });
    if (write.create) followOpenKey();
    hideDiff();
    say(editorMessage(), "ok", `Saved \u201c${write.key}\u201d at revision ${revision}.`);
    $("edit-meta").textContent = `revision ${revision}` + (write.ttl ? ` \u00b7 TTL ${write.ttl} s` : "");
    refreshSoon();
  } catch (error) {
    say(editorMessage(), "error", error.status === 412 ? conflictText("saved", write, error) : describeError(error));
  } finally {
    state.busyKey = null;
  }
}

async function remove() {
  const editing = state.editing;
  if (!editing || !window.confirm(`Delete \u201c${editing.key}\u201d?`)) return;
  state.busyKey = editing.key;
  try {
    await api.deleteKey(editing.key, editing.revision);
    newKey();
    say(editorMessage(), "ok", `Deleted \u201c${editing.key}\u201d.`);
    refreshSoon();
  } catch (error) {
    const write = { key: editing.key, revision: editing.revision, create: false };
    say(
      editorMessage(),
      "error",
      error.status === 412
        ? conflictText("deleted", write, error)
        : error.status === 404
          ? `\u201c${editing.key}\u201d was already deleted.`
          : describeError(error),
    );
  } finally {
    state.busyKey = null;
  }
}

function formatJson() {
  const box = $("edit-value");
  try {
    box.value = JSON.stringify(JSON.parse(box.value), null, 2);
    quiet(editorMessage());
  } catch (error) {
    say(editorMessage(), "error", `Not valid JSON: ${error.message}`);
  }
}

// ---------------------------------------------------------------- history

/** The history view lists at most this many versions of a key. */
const HISTORY_LIMIT = 20;

let historyGeneration = 0;
let historyShown = null; // the older version shown, to restore

function closeHistory() {
  historyGeneration += 1;
  historyShown = null;
  $("history").hidden = true;
  $("history-list").replaceChildren();
  $("history-shown").hidden = true;
  quiet($("history-message"));
}

/**
 * Walk back through the open key's versions: read it at the revision the
 * editor holds, then at the revision just before each version's own
 * (its mod_revision - 1), until it did not exist then, the history was
 * compacted there, its first version, or HISTORY_LIMIT versions.
 */
async function openHistory() {
  const editing = state.editing;
  if (!editing) return;
  closeHistory();
  const mine = historyGeneration;
  $("history").hidden = false;
  const status = $("history-status");
  status.textContent = "reading…";
  const versions = [];
  let revision = editing.revision;
  let end = "back to its first version";
  try {
    while (versions.length < HISTORY_LIMIT) {
      const entry = await api.getKeyAt(editing.key, revision);
      if (mine !== historyGeneration) return;
      if (entry === null) break;
      versions.push(entry);
      if (entry.revision === entry.createRevision) break;
      revision = entry.revision - 1;
    }
    if (versions.length === HISTORY_LIMIT) end = `only the latest ${HISTORY_LIMIT} are listed`;
  } catch (error) {
    if (mine !== historyGeneration) return;
    if (error.status !== 410) {
      status.textContent = "";
      say($("history-message"), "error", "Could not read the history: " + describeError(error));
      return;
    }
    end = `older versions were compacted (history kept from revision ${error.problem.compact_revision})`;
  }
  status.textContent = `${plural(versions.length, "version")}; ${end}`;
  $("history-list").replaceChildren(
    ...versions.map((entry) =>
      el(
        "li",
        { "data-revision": String(entry.revision) },
        el("button", {
          type: "button",
          text: `version ${entry.version} · revision ${entry.revision} · ${formatBytes(entry.bytes.length)}` +
            (entry.revision === editing.revision ? " (open)" : ""),
          onclick: () => showVersion(entry),
        }),
      ),
    ),
  );
}

function showVersion(entry) {
  historyShown = entry;
  quiet($("history-message"));
  for (const item of $("history-list").children) {
    item.classList.toggle("shown", item.dataset.revision === String(entry.revision));
  }
  const shown = present(entry.bytes, entry.contentType);
  $("history-meta").textContent =
    `Version ${entry.version} at revision ${entry.revision} · ${entry.contentType}` + (shown.binary ? " · binary, as base64" : "");
  $("history-value").textContent = shown.text;
  $("history-shown").hidden = false;
}

/**
 * Restore the version shown: an ordinary write of its bytes and content
 * type, conditional on the revision the editor holds (a change made since
 * is a conflict, not overwritten). The key keeps the TTL the editor shows.
 */
async function restoreVersion() {
  const entry = historyShown;
  const editing = state.editing;
  if (!entry || !editing || entry.key !== editing.key) return;
  const write = { key: editing.key, revision: editing.revision, create: false, contentType: entry.contentType,
    ttl: $("edit-ttl").value.trim() };
  state.busyKey = write.key;
  try {
    const revision = await api.putKey(write.key, entry.bytes, write);
    closeHistory();
    await openKey(write.key);
    say(editorMessage(), "ok", `Restored version ${entry.version} (revision ${entry.revision}) of “${write.key}” as revision ${revision}.`);
    refreshSoon();
  } catch (error) {
    say($("history-message"), "error", error.status === 412 ? conflictText("restored", write, error) : describeError(error));
  } finally {
    state.busyKey = null;
  }
}

// ------------------------------------------------------------ transaction

function txnMessage() {
  return $("txn-message");
}

function updateTxnButtons() {
  const open = state.txn !== null;
  $("txn-begin").disabled = open;
  $("txn-commit").disabled = !open;
  $("txn-abort").disabled = !open;
  $("stage-put").disabled = !open || (state.editing !== null && state.editing.binary);
  $("stage-delete").disabled = !open || state.editing === null;
}

function closeTxn() {
  state.txn = null;
  $("txn-state").textContent = "No transaction open. Edits are saved one by one.";
  $("txn-ops").replaceChildren();
  updateTxnButtons();
}

/** A transaction that the server no longer knows (expired, finished). */
function txnLost(error) {
  if (error.status === 404 && error.problem.code === "transaction-not-found") {
    closeTxn();
    say(txnMessage(), "error", "The transaction has expired or ended; nothing of it was applied. Begin a new one.");
    return true;
  }
  return false;
}

async function beginTxn() {
  quiet(txnMessage());
  try {
    state.txn = await api.beginTxn();
  } catch (error) {
    say(txnMessage(), "error", describeError(error));
    return;
  }
  $("txn-state").textContent = `Transaction ${state.txn} is open: use Stage save and Stage delete, then Commit or Abort.`;
  $("txn-ops").replaceChildren();
  updateTxnButtons();
}

async function showStaged() {
  const described = await api.describeTxn(state.txn);
  $("txn-ops").replaceChildren(
    ...described.ops.map((op) =>
      el("li", { text: op.op === "put" ? `put ${op.key} (${formatBytes(op.size)})` : `delete ${op.key}` }),
    ),
  );
}

async function stage(kind) {
  if (state.txn === null) return;
  let write;
  if (kind === "put") {
    write = draft();
    if (!write) return;
  } else if (state.editing) {
    write = { key: state.editing.key, revision: state.editing.revision };
  } else {
    return;
  }
  try {
    if (kind === "put") await api.stagePut(state.txn, write.key, write.body, write);
    else await api.stageDelete(state.txn, write.key, write.revision);
    say(txnMessage(), "ok", `Staged: ${kind} \u201c${write.key}\u201d. Commit to apply everything at once.`);
    await showStaged();
  } catch (error) {
    if (!txnLost(error)) say(txnMessage(), "error", describeError(error));
  }
}

/** The 409 of a commit: each key someone else changed, in words. */
function conflictItems(conflicts) {
  const seen = new Set();
  const items = [];
  for (const conflict of conflicts || []) {
    const now = conflict.actual ? `now at revision ${conflict.actual}` : "now deleted";
    let text;
    if (conflict.check === "absent") text = `${conflict.key}: was expected not to exist; ${now}`;
    else if (conflict.check === "present") text = `${conflict.key}: was expected to exist; ${now}`;
    else if (conflict.expected) text = `${conflict.key}: you had revision ${conflict.expected}; ${now}`;
    else text = `${conflict.key}: did not exist when staged; ${now}`;
    if (!seen.has(text)) items.push(text);
    seen.add(text);
  }
  return items;
}

async function commitTxn() {
  const id = state.txn;
  try {
    const result = await api.commitTxn(id);
    closeTxn();
    say(txnMessage(), "ok", `Committed ${result.ops} change${result.ops === 1 ? "" : "s"} at revision ${result.revision}.`);
    refreshSoon();
    if (state.editing) openKey(state.editing.key, { keepMessage: true });
  } catch (error) {
    if (error.status === 409) {
      closeTxn();
      say(
        txnMessage(),
        "error",
        "Conflict: the transaction was not committed and nothing was applied. Someone else changed these keys after the transaction read or staged them:",
        conflictItems(error.problem.conflicts),
      );
    } else if (!txnLost(error)) {
      say(txnMessage(), "error", describeError(error));
    }
  }
}

async function abortTxn() {
  try {
    await api.abortTxn(state.txn);
  } catch (error) {
    if (txnLost(error)) return;
    say(txnMessage(), "error", describeError(error));
    return;
  }
  closeTxn();
  say(txnMessage(), "ok", "Transaction aborted: nothing was applied.");
}

// ------------------------------------------------------------------- live

function liveState(name, error) {
  const pill = $("live-state");
  const words = { on: "live", off: "off", connecting: "connecting\u2026", retry: "reconnecting\u2026", denied: "no access" };
  pill.textContent = words[name] || name;
  pill.className = "pill" + (name === "on" ? " on" : name === "denied" || name === "retry" ? " error" : "");
  if (name === "retry" && error) logNote(`stream dropped (${describeError(error)}); reconnecting`);
}

function logLine(node) {
  const log = $("live-log");
  log.prepend(node);
  while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
}

function logNote(text) {
  logLine(el("li", { class: "note", text: `${new Date().toLocaleTimeString()} ${text}` }));
}

function onChange(event) {
  const data = event.data || {};
  const details = event.type === "put" ? ` (v${data.version}, ${formatBytes(data.size || 0)})` : "";
  logLine(
    el("li", {
      class: event.type,
      text: `${new Date().toLocaleTimeString()} #${data.revision} ${event.type} ${data.key}${details}`,
    }),
  );
  refreshSoon({ live: true });
}

const watcher = new Watcher(onChange, liveState);

// ------------------------------------------------- the open key, followed

function hideDiff() {
  $("editor-diff").hidden = true;
  $("editor-diff").replaceChildren();
}

function showDiff(title, before, after) {
  const lines = foldUnchanged(lineDiff(before, after)).map((entry) =>
    entry.op === "\u2026"
      ? el("span", { class: "fold", text: `\u2026 ${plural(entry.count, "unchanged line")}` })
      : el("span", { class: { "-": "del", "+": "add", " ": "same" }[entry.op], text: `${entry.op} ${entry.line}` }),
  );
  $("editor-diff").replaceChildren(el("span", { class: "head", text: title }), ...lines);
  $("editor-diff").hidden = false;
}

let theirsGeneration = 0;

/**
 * Someone else changed the open key: say so at once, with their revision
 * and, for a new value, a line diff from the version opened to theirs.
 */
async function onKeyEvent(event) {
  const data = event.data || {};
  const editing = state.editing;
  if (!editing || data.key !== editing.key || !(data.revision > editing.revision) || state.busyKey === data.key) return;
  const mine = ++theirsGeneration;
  const tail = `(you opened revision ${editing.revision}). Saving your text now would be refused as a conflict; Reload to take their version.`;
  if (event.type !== "put") {
    hideDiff();
    const what = event.type === "expire" ? "expired" : "deleted";
    say(editorMessage(), "warn", `\u201c${data.key}\u201d was ${what} by someone else at revision ${data.revision} ${tail}`);
    return;
  }
  let theirs;
  try {
    theirs = await api.getKey(data.key);
  } catch (error) {
    theirs = null; // deleted again meanwhile: its delete event says so
  }
  if (mine !== theirsGeneration || state.editing !== editing || theirs === null) return;
  say(editorMessage(), "warn", `\u201c${data.key}\u201d was changed by someone else: it is now at revision ${theirs.revision} ${tail}`);
  const shown = present(theirs.bytes, theirs.contentType);
  if (editing.binary || shown.binary) hideDiff();
  else showDiff(`revision ${editing.revision} (- as you opened it) \u2192 revision ${theirs.revision} (+ theirs)`, editing.text, shown.text);
}

const keyWatcher = new Watcher(onKeyEvent, () => {});

/**
 * Follow the open key from the revision the editor holds: a change made
 * while the stream opens is replayed, not missed.
 */
function followOpenKey() {
  if (state.editing) keyWatcher.start(state.editing.key, state.editing.revision);
}

function restartLive() {
  if ($("live-on").checked) watcher.start(state.prefix);
  else watcher.stop();
}

// ------------------------------------------------------------------ start

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useToken($("token").value.trim());
  });
  $("token-forget").addEventListener("click", () => useToken(""));
  $("list-form").addEventListener("submit", (event) => {
    event.preventDefault();
    listFrom($("prefix").value);
  });
  $("page-size").addEventListener("change", () => listFrom(state.prefix));
  $("page-next").addEventListener("click", () => {
    if (state.next === null) return;
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    loadPage({ count: "keep" });
  });
  $("page-prev").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    loadPage({ count: "keep" });
  });
  $("page-first").addEventListener("click", () => {
    state.page = 0;
    loadPage({ count: "keep" });
  });
  $("new-key").addEventListener("click", newKey);
  $("tree-on").addEventListener("change", () => {
    state.tree = $("tree-on").checked;
    listFrom(state.prefix);
  });
  $("find-form").addEventListener("submit", (event) => {
    event.preventDefault();
    find($("find").value);
  });
  $("find-clear").addEventListener("click", () => {
    $("find").value = "";
    find("");
  });
  $("delete-prefix").addEventListener("click", askDeletePrefix);
  $("confirm-text").addEventListener("input", () => {
    $("confirm-delete").disabled = $("confirm-text").value !== confirmWord(state.confirming);
  });
  $("prefix-confirm").addEventListener("submit", (event) => {
    event.preventDefault();
    deletePrefixNow();
  });
  $("confirm-cancel").addEventListener("click", cancelDeletePrefix);
  $("lease-refresh").addEventListener("click", loadLeases);
  $("export").addEventListener("click", exportSnapshot);
  $("import-file").addEventListener("change", chooseImport);
  $("import-confirm").addEventListener("submit", (event) => {
    event.preventDefault();
    runImport();
  });
  $("import-cancel").addEventListener("click", cancelImport);
  $("editor-form").addEventListener("submit", (event) => {
    event.preventDefault();
    save();
  });
  $("delete").addEventListener("click", remove);
  $("reload").addEventListener("click", () => state.editing && openKey(state.editing.key));
  $("format").addEventListener("click", formatJson);
  $("history-open").addEventListener("click", openHistory);
  $("history-restore").addEventListener("click", restoreVersion);
  $("history-close").addEventListener("click", closeHistory);
  $("stage-put").addEventListener("click", () => stage("put"));
  $("stage-delete").addEventListener("click", () => stage("delete"));
  $("txn-begin").addEventListener("click", beginTxn);
  $("txn-commit").addEventListener("click", commitTxn);
  $("txn-abort").addEventListener("click", abortTxn);
  $("live-on").addEventListener("change", restartLive);
  $("live-clear").addEventListener("click", () => $("live-log").replaceChildren());
  // Leaving the page must close the stream: a page kept in the back/forward
  // cache would otherwise hold its connection open, and browsers allow only
  // a few connections per server.
  window.addEventListener("pagehide", () => {
    watcher.stop();
    keyWatcher.stop();
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      loadPage();
      loadLeases();
      restartLive();
      followOpenKey();
    }
  });

  const fromHash = new URLSearchParams(location.hash.slice(1));
  state.prefix = fromHash.get("prefix") || "";
  state.tree = fromHash.get("view") !== "flat";
  $("tree-on").checked = state.tree;
  $("prefix").value = state.prefix;
  showTokenState();
  newKey();
  $("edit-key").blur();
  loadPage();
  loadLeases();
  setInterval(tickLeases, 1000);
  restartLive();
  document.body.dataset.ready = "true";
}

start();
