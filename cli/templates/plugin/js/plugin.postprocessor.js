// {{name}}: a Sluice postprocessor in JavaScript.
//
// One score tensor in, the best class out as JSON: {"index": 1, "score": 0.75}
// (with "label" when labels are configured). Replace the logic in `best`
// with your own; README.md says how to build and test.
//
// The WIT in JavaScript: the exported interface `postprocess` is an exported
// object with `init` and `postprocess`; init's error is a thrown *string* (a
// thrown Error object traps the instance); each item's result is
// `{tag: "ok", val: document}` or `{tag: "err", val: {tag: "invalid-input", val: message}}`.
//
// Files (labels, vocabularies) come from the folders sluice.toml grants:
// `import { getDirectories } from "wasi:filesystem/preopens@0.2.12"`
// (docs/plugins.md, JavaScript, shows how).

// What `init` builds, for this instance (the host runs several and may
// replace one at any time, calling `init` again).
let config = null;

/** [index, score] of the highest score, ties to the lower index; null if empty. */
export function best(scores) {
  let found = null;
  scores.forEach((s, i) => {
    if (found === null || s > found[1]) found = [i, s];
  });
  return found;
}

function classify(tensors) {
  const name = config.input;
  const tensor = tensors.find((t) => t.name === name);
  if (tensor === undefined) throw `no tensor named \`${name}\``;
  if (tensor.dtype !== "fp32") throw `tensor \`${name}\` is not fp32`;
  // Shape [1, K] or [K]: the host keeps a batch axis of 1 per item.
  const data = tensor.data;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const scores = Array.from({ length: data.byteLength >> 2 }, (_, i) => view.getFloat32(i * 4, true));
  const found = best(scores);
  if (found === null) throw `tensor \`${name}\` is empty`;
  const [index, score] = found;
  const result = { index, score };
  if (config.labels !== null) {
    if (index >= config.labels.length) throw `class ${index} has no label`;
    result.label = config.labels[index];
  }
  return result;
}

const encoder = new TextEncoder();

export const postprocess = {
  init(json) {
    const given = JSON.parse(json);
    const unknown = Object.keys(given).filter((k) => !["input", "labels"].includes(k)).sort();
    if (unknown.length > 0) throw `unknown field \`${unknown[0]}\`, expected \`input\` or \`labels\``;
    if (Array.isArray(given.labels) && given.labels.length === 0) throw "`labels` is empty";
    config = { input: given.input ?? "output", labels: given.labels ?? null };
  },

  postprocess(items) {
    return items.map((item) => {
      try {
        const body = encoder.encode(JSON.stringify(classify(item.tensors)));
        return { tag: "ok", val: { contentType: "application/json", body } };
      } catch (message) {
        return { tag: "err", val: { tag: "invalid-input", val: String(message) } };
      }
    });
  },
};
