// classify-js: the bundled Rust `classify-postprocess`, in JavaScript.
//
// A Sluice postprocessor for classifiers: one score vector in (shape [K] or
// [1, K]), the top-k classes out as JSON:
//
//   {"label": "cat", "index": 3, "score": 0.91,
//    "top": [{"label": "cat", "index": 3, "score": 0.91}, ...]}
//
// Built with jco (ComponentizeJS, StarlingMonkey) against `wit/` (world
// `postprocessor`); see README.md. Its results equal the Rust plugin's (CI
// checks it on the digits pipeline).
//
// How the WIT maps to JavaScript here:
// * the exported interface `postprocess` is an exported object of the same
//   name with `init` and `postprocess`;
// * `result<_, string>` (init): return normally, or throw a *string* (a
//   thrown `Error` object traps the instance instead);
// * `list<result<document, item-error>>`: an array of `{tag: 'ok', val}` or
//   `{tag: 'err', val: {tag: 'invalid-input', val: message}}`;
// * a tensor is `{name, dtype: 'fp32', shape: [..], data: Uint8Array}`.

import { getDirectories } from "wasi:filesystem/preopens@0.2.12";

// What `init` builds, for this instance (the host runs several instances
// and may replace one at any time, calling `init` again).
let plugin = null;

// Readers of little-endian elements, by dtype.
const READERS = {
  fp32: [4, (v, o) => v.getFloat32(o, true)],
  fp64: [8, (v, o) => v.getFloat64(o, true)],
  u8: [1, (v, o) => v.getUint8(o)],
  i32: [4, (v, o) => v.getInt32(o, true)],
  i64: [8, (v, o) => Number(v.getBigInt64(o, true))],
};

const KEYS = ["input", "softmax", "top_k", "labels", "labels_file"];

function configure(config) {
  const unknown = Object.keys(config).filter((k) => !KEYS.includes(k)).sort();
  if (unknown.length > 0) {
    throw `unknown field \`${unknown[0]}\`, expected one of ${KEYS.join(", ")}`;
  }
  const input = config.input ?? "probabilities";
  const topK = config.top_k ?? 5;
  if (input === "") throw "`input` must not be empty";
  if (!Number.isInteger(topK) || topK < 1) throw "`top_k` must be at least 1";
  let labels = config.labels ?? null;
  const labelsFile = config.labels_file ?? null;
  if (labels !== null && labelsFile !== null) throw "set `labels` or `labels_file`, not both";
  if (labels !== null) {
    if (labels.length === 0) throw "`labels` is empty";
  } else if (labelsFile !== null) {
    // One label per line, trimmed; trailing blank lines ignored.
    labels = new TextDecoder().decode(readFile(labelsFile)).split("\n").map((l) => l.trim());
    while (labels.length > 0 && labels[labels.length - 1] === "") labels.pop();
    if (labels.length === 0) throw `\`labels_file\` ${labelsFile} holds no labels`;
  }
  return { input, softmax: config.softmax === true, topK, labels };
}

/** The largest file `readFile` reads (labels, vocabularies, scalers). */
const MAX_FILE_BYTES = 16 << 20;

/**
 * The bytes of the file at `path`, a path inside a folder the configuration
 * grants (`[plugins.NAME.grants] dirs`, e.g. "/model/labels.txt"), through
 * WASI's filesystem (there is no `node:fs`). Throws a string naming the
 * path when no granted folder holds it or it cannot be read.
 */
function readFile(path) {
  const inside = (root) => path.startsWith(root.endsWith("/") ? root : `${root}/`);
  const granted = getDirectories()
    .filter(([, root]) => inside(root))
    .sort((a, b) => b[1].length - a[1].length);
  if (granted.length === 0) throw `cannot read ${path}: no granted folder holds it`;
  const [dir, root] = granted[0];
  const relative = path.slice(root.length).replace(/^\/+/, "");
  try {
    const file = dir.openAt({}, relative, {}, { read: true });
    const chunks = [];
    let size = 0;
    for (;;) {
      const [bytes, end] = file.read(65536n, BigInt(size));
      chunks.push(bytes);
      size += bytes.length;
      if (size > MAX_FILE_BYTES) throw `larger than ${MAX_FILE_BYTES} bytes`;
      if (end || bytes.length === 0) break;
    }
    const all = new Uint8Array(size);
    chunks.reduce((at, chunk) => (all.set(chunk, at), at + chunk.length), 0);
    return all;
  } catch (e) {
    // WASI errors arrive as objects whose `payload` is the error code.
    throw `cannot read ${path}: ${e?.payload ?? e}`;
  }
}

/** The score vector of the `input` tensor, as f32 values. */
function scores(tensors) {
  const name = plugin.input;
  const tensor = tensors.find((t) => t.name === name);
  if (tensor === undefined) {
    const have = tensors.map((t) => t.name);
    throw new ItemError(`no output tensor named \`${name}\` (have: ${JSON.stringify(have)})`);
  }
  const shape = Array.from(tensor.shape);
  if (shape.length === 0 || shape.slice(0, -1).some((d) => d !== 1)) {
    throw new ItemError(`tensor \`${name}\` has shape [${shape.join(", ")}], expected [K] or [1, K]`);
  }
  const reader = READERS[tensor.dtype];
  if (reader === undefined) {
    throw new ItemError(`tensor \`${name}\` has dtype ${tensor.dtype}, not supported here`);
  }
  const [size, read] = reader;
  const count = shape.reduce((a, b) => a * b, 1);
  const data = tensor.data;
  if (data.length !== count * size) {
    throw new ItemError(`tensor \`${name}\`: ${data.length} bytes do not fill shape [${shape.join(", ")}]`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return Array.from({ length: count }, (_, i) => Math.fround(read(view, i * size)));
}

/** The top-k [index, score], best first, ties by the lower index. */
function rank(values) {
  if (values.length === 0) throw "the score tensor is empty";
  const nan = values.findIndex(Number.isNaN);
  if (nan >= 0) throw `score ${nan} is NaN`;
  if (plugin.softmax) {
    const inf = values.indexOf(Infinity);
    if (inf >= 0) throw `score ${inf} is +inf; softmax is undefined`;
    const max = Math.max(...values);
    if (max === -Infinity) throw "every score is -inf; softmax is undefined";
    const exps = values.map((s) => Math.exp(s - max));
    const sum = exps.reduce((a, b) => a + b, 0);
    values = exps.map((e) => Math.fround(e / sum));
  } else {
    const inf = values.findIndex((s) => !Number.isFinite(s));
    if (inf >= 0) throw `score ${inf} is infinite, which JSON cannot carry (softmax = false)`;
  }
  // Array.prototype.sort is stable: equal scores keep index order.
  const order = values.map((_, i) => i).sort((a, b) => values[b] - values[a]);
  return order.slice(0, Math.min(plugin.topK, values.length)).map((i) => [i, values[i]]);
}

/** An item's own failure (`invalid-input`). */
class ItemError {
  constructor(message) {
    this.message = message;
  }
}

function classify(tensors) {
  const values = scores(tensors);
  const { labels, input } = plugin;
  if (labels !== null && labels.length !== values.length) {
    throw new ItemError(
      `${labels.length} labels are configured but tensor \`${input}\` has ${values.length} classes`,
    );
  }
  let ranked;
  try {
    ranked = rank(values);
  } catch (message) {
    throw new ItemError(`tensor \`${input}\`: ${message}`);
  }
  const top = ranked.map(([index, score]) => ({
    label: labels === null ? String(index) : labels[index],
    index,
    score,
  }));
  return { ...top[0], top };
}

const encoder = new TextEncoder();

export const postprocess = {
  init(config) {
    // A thrown string is init's error: the host refuses the plugin with it.
    plugin = configure(JSON.parse(config));
  },

  postprocess(items) {
    // One item's failure is its own: never throw out of the batch.
    return items.map((item) => {
      try {
        const body = encoder.encode(JSON.stringify(classify(item.tensors)));
        return { tag: "ok", val: { contentType: "application/json", body } };
      } catch (e) {
        const message = e instanceof ItemError ? e.message : `internal error: ${e}`;
        const tag = e instanceof ItemError ? "invalid-input" : "internal";
        return { tag: "err", val: { tag, val: message } };
      }
    });
  },
};
