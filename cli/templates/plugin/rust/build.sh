#!/usr/bin/env bash
# Builds the plugin as a WebAssembly component: build.sh [OUT.wasm]
# (default plugin.wasm next to this script).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:-$here/plugin.wasm}")"
started=$(date +%s)
# rustup does not install a target on demand.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --manifest-path "$here/Cargo.toml" --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-$here/target}/wasm32-wasip2/release/{{crate}}.wasm" "$out"
echo "built $out ($(stat -c %s "$out") bytes) in $(( $(date +%s) - started )) s"
