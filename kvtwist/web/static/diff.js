/**
 * A line diff of two texts, for showing what someone else changed in the
 * key open in the editor: the longest common subsequence of lines, after
 * trimming the lines both texts share at either end. Past MAX_CELLS of the
 * LCS table (a few thousand changed lines on each side) it gives up on
 * aligning them and shows every old line removed and every new line added,
 * which is still true, only less helpful.
 */

const MAX_CELLS = 4_000_000;

/** The edit from `before` to `after`: [{op: " " | "-" | "+", line}]. */
export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head += 1;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail += 1;
  const same = (lines) => lines.map((line) => ({ op: " ", line }));
  const middleA = a.slice(head, a.length - tail);
  const middleB = b.slice(head, b.length - tail);
  return [...same(a.slice(0, head)), ...align(middleA, middleB), ...same(a.slice(a.length - tail))];
}

function align(a, b) {
  const n = a.length;
  const m = b.length;
  if ((n + 1) * (m + 1) > MAX_CELLS) {
    return [...a.map((line) => ({ op: "-", line })), ...b.map((line) => ({ op: "+", line }))];
  }
  // lcs[i * width + j]: the LCS length of a[i:] and b[j:].
  const width = m + 1;
  const lcs = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lcs[i * width + j] = a[i] === b[j]
        ? lcs[(i + 1) * width + j + 1] + 1
        : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      out.push({ op: " ", line: a[i] });
      i += 1;
      j += 1;
    } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
      out.push({ op: "-", line: a[i] });
      i += 1;
    } else {
      out.push({ op: "+", line: b[j] });
      j += 1;
    }
  }
  while (i < n) out.push({ op: "-", line: a[i++] });
  while (j < m) out.push({ op: "+", line: b[j++] });
  return out;
}

/**
 * The diff with long unchanged runs folded: `context` lines are kept on
 * either side of each change, each other run becomes one {op: "…", count}.
 */
export function foldUnchanged(diff, context = 3) {
  const keep = new Array(diff.length).fill(false);
  diff.forEach((entry, index) => {
    if (entry.op === " ") return;
    for (let k = Math.max(0, index - context); k <= Math.min(diff.length - 1, index + context); k += 1) keep[k] = true;
  });
  const out = [];
  let skipped = 0;
  diff.forEach((entry, index) => {
    if (keep[index]) {
      if (skipped) out.push({ op: "\u2026", count: skipped });
      skipped = 0;
      out.push(entry);
    } else {
      skipped += 1;
    }
  });
  if (skipped) out.push({ op: "\u2026", count: skipped });
  return out;
}
