#!/usr/bin/env bash
# Builds the plugin as a WebAssembly component: build.sh [OUT.wasm]
# (default plugin.wasm next to this script), with componentize-py pinned
# below, installed on first use into $SLUICE_TOOLCHAIN_DIR (default
# .toolchain/ next to this script; share one across projects by setting it).
set -euo pipefail
world=postprocessor
componentize_py=0.25.1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:-$here/plugin.wasm}")"
toolchains="${SLUICE_TOOLCHAIN_DIR:-$here/.toolchain}"
venv="$toolchains/componentize-py-$componentize_py"
started=$(date +%s)
# `.complete` is written last: an install cut short is redone, not used.
if [ ! -f "$venv/.complete" ]; then
  echo "installing componentize-py $componentize_py into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$componentize_py"
  touch "$venv/.complete"
fi
# `app.py` is the module; the WIT is `wit/` (sluice:plugin@0.1.0).
cd "$here"
"$venv/bin/componentize-py" --wit-path wit --world "sluice:plugin/$world" componentize app --output "$out" > /dev/null
echo "built $out ($(stat -c %s "$out") bytes) in $(( $(date +%s) - started )) s"
