/**
 * Backups on the admin page: read a snapshot (GET /v1/snapshot: a header
 * line, one line per key, an end line) or a dump (`kvtwist dump`: one line
 * per key) and turn its keys into POST /v1/batch requests that fit the
 * server's limits. Pure functions: the page does the reading and writing.
 */

const encoder = new TextEncoder();

/** Bytes of a batch body around its ops: {"ops":[ ... ]}. */
const BODY_OVERHEAD = encoder.encode('{"ops":[]}').length;

/** Ops per request at most, whatever the server allows: keeps each commit and its progress step small. */
const OPS_PER_REQUEST = 1000;

function media(contentType) {
  return (contentType || "").split(";")[0].trim().toLowerCase();
}

function base64Text(text) {
  let binary = "";
  for (const byte of encoder.encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/**
 * The keys of a snapshot or dump file's text: {header, records}. `header`
 * is the snapshot's first line ({revision, prefix, ...}) or null for a
 * dump. Throws an Error saying which line is wrong; a snapshot without its
 * end line (cut short) or whose end line counts other keys is refused.
 */
export function parseBackup(text) {
  let header = null;
  let end = null;
  const records = [];
  const lines = text.split("\n");
  lines.forEach((line, index) => {
    if (!line.trim()) return;
    const where = `line ${index + 1}`;
    let item;
    try {
      item = JSON.parse(line);
    } catch {
      throw new Error(`${where} is not JSON`);
    }
    if (typeof item !== "object" || item === null || Array.isArray(item)) throw new Error(`${where} is not a JSON object`);
    if (end) throw new Error(`${where} follows the snapshot's end line`);
    if ("snapshot" in item) {
      if (header || records.length) throw new Error(`${where}: a snapshot header inside the file`);
      if (item.snapshot !== "kvtwist" || item.format !== 1) throw new Error(`${where}: not a kvtwist snapshot of format 1`);
      header = item;
      return;
    }
    if (item.end === true) {
      if (!header) throw new Error(`${where}: an end line without a snapshot header`);
      end = item;
      return;
    }
    if (typeof item.key !== "string" || !item.key) throw new Error(`${where} has no key`);
    if (("value" in item) === ("value_base64" in item)) throw new Error(`${where} needs exactly one of value and value_base64`);
    if (item.expires !== undefined && item.expires !== null && Number.isNaN(Date.parse(item.expires))) {
      throw new Error(`${where}: expires is not a date`);
    }
    records.push(item);
  });
  if (header && !end) throw new Error("the snapshot has no end line: it was cut short, and must not be used");
  if (end && end.keys !== records.length) {
    throw new Error(`the snapshot's end line counts ${end.keys} keys, but it holds ${records.length}`);
  }
  if (!header && !records.length) throw new Error("the file holds no keys");
  return { header, records };
}

/**
 * A record as a batch `set` op: exact bytes with their content type, and
 * the TTL left of its expiry at `now` (ms); null when it has expired.
 */
export function setOp(record, now) {
  const op = { op: "set", key: record.key };
  if ("value_base64" in record) {
    op.value_base64 = record.value_base64;
    op.content_type = record.content_type || "application/octet-stream";
  } else if (!record.content_type || media(record.content_type) === "application/json") {
    op.value = record.value; // stored as application/json
  } else {
    // A dump's JSON value of another JSON type (application/merge-patch+json...).
    op.value_base64 = base64Text(JSON.stringify(record.value));
    op.content_type = record.content_type;
  }
  if (record.expires) {
    const left = Math.ceil((Date.parse(record.expires) - now) / 1000);
    if (!(left > 0)) return null;
    op.ttl = left;
  }
  return op;
}

/**
 * Split `ops` into batch bodies the server takes: at most `maxOps` ops
 * (and OPS_PER_REQUEST) and `maxBytes` body bytes each. An op too big for
 * any body goes alone (the server then refuses it with a 413).
 */
export function chunkOps(ops, { maxOps, maxBytes }) {
  const perRequest = Math.max(1, Math.min(maxOps, OPS_PER_REQUEST));
  const chunks = [];
  let current = [];
  let size = BODY_OVERHEAD;
  for (const op of ops) {
    const bytes = encoder.encode(JSON.stringify(op)).length;
    // Every op after a body's first adds a comma.
    if (current.length && (current.length >= perRequest || size + 1 + bytes > maxBytes)) {
      chunks.push(current);
      current = [];
      size = BODY_OVERHEAD;
    }
    size += (current.length ? 1 : 0) + bytes;
    current.push(op);
  }
  if (current.length) chunks.push(current);
  return chunks;
}
