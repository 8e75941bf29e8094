// {{name}}: a Sluice preprocessor in JavaScript.
//
// UTF-8 text holding numbers separated by commas or whitespace in, one fp32
// tensor of shape [1, N] out. Replace the logic in `parse` with your own;
// README.md says how to build and test.
//
// The WIT in JavaScript: the exported interface `preprocess` is an exported
// object with `init` and `preprocess`; init's error is a thrown *string* (a
// thrown Error object traps the instance); each item's result is
// `{tag: "ok", val: [tensors]}` or `{tag: "err", val: {tag: "invalid-input", val: message}}`.
//
// Files (labels, vocabularies) come from the folders sluice.toml grants:
// `import { getDirectories } from "wasi:filesystem/preopens@0.2.12"`
// (docs/plugins.md, JavaScript, shows how).

// What `init` builds, for this instance (the host runs several and may
// replace one at any time, calling `init` again).
let config = null;

/** The numbers in `text`, checked against `length`; throws a message if not. */
export function parse(text, length) {
  const values = [];
  for (const token of text.split(/[,\s]+/)) {
    if (token === "") continue;
    const value = Number(token);
    if (Number.isNaN(value)) throw `\`${token}\` is not a number`;
    values.push(value);
  }
  if (values.length === 0) throw "the input holds no numbers";
  if (length !== null && values.length !== length) {
    throw `expected ${length} numbers, got ${values.length}`;
  }
  return values;
}

const decoder = new TextDecoder("utf-8", { fatal: true });

export const preprocess = {
  init(json) {
    const given = JSON.parse(json);
    const unknown = Object.keys(given).filter((k) => !["output", "length"].includes(k)).sort();
    if (unknown.length > 0) throw `unknown field \`${unknown[0]}\`, expected \`output\` or \`length\``;
    const output = given.output ?? "input";
    if (output === "") throw "`output` must not be empty";
    config = { output, length: given.length ?? null };
  },

  preprocess(items) {
    return items.map((item) => {
      let text;
      try {
        text = decoder.decode(item.data);
      } catch {
        return { tag: "err", val: { tag: "invalid-input", val: "the input is not UTF-8 text" } };
      }
      let values;
      try {
        values = parse(text, config.length);
      } catch (message) {
        return { tag: "err", val: { tag: "invalid-input", val: String(message) } };
      }
      // Tensors keep a batch axis of 1: the host stacks items into batches.
      const data = new Uint8Array(new Float32Array(values).buffer);
      return {
        tag: "ok",
        val: [{ name: config.output, dtype: "fp32", shape: [1, values.length], data }],
      };
    });
  },
};
