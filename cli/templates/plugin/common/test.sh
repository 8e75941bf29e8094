#!/usr/bin/env bash
# Builds the plugin and runs it through the real Sluice host on the sample
# inputs: the output must equal expected.jsonl. Uses `sluice` from PATH, or
# the program named by $SLUICE.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
sluice="${SLUICE:-sluice}"
{{native_tests}}
./build.sh plugin.wasm
# One sample is meant to fail (it shows an item's error), so `plugin run`
# exits 1 here; what counts is that every line is what was expected.
"$sluice" plugin run --config sluice.toml sample/* > sample-output.jsonl || [ -s sample-output.jsonl ]
if ! diff -u expected.jsonl sample-output.jsonl; then
  echo "FAILED: the plugin's output (sample-output.jsonl) differs from expected.jsonl" >&2
  exit 1
fi
echo "ok: $(wc -l < expected.jsonl) sample input(s) gave the expected output"
