#!/usr/bin/env bash
# Builds the plugin as a WebAssembly component: build.sh [OUT.wasm]
# (default plugin.wasm next to this script), with jco pinned in
# package.json and package-lock.json, installed on first use into
# $SLUICE_TOOLCHAIN_DIR (default .toolchain/ next to this script; share one
# across projects by setting it).
set -euo pipefail
world=postprocessor
jco=1.34.0 # 1.35 cannot read WIT folders; must match package.json

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:-$here/plugin.wasm}")"
toolchains="${SLUICE_TOOLCHAIN_DIR:-$here/.toolchain}"
prefix="$toolchains/jco-$jco"
started=$(date +%s)
# `.complete` is written last: an install cut short is redone, not used.
if [ ! -f "$prefix/.complete" ]; then
  echo "installing jco $jco into $prefix" >&2
  rm -rf "$prefix" && mkdir -p "$prefix"
  cp "$here/package.json" "$here/package-lock.json" "$prefix/"
  # `npm install` with the lock file installs the locked versions; `npm ci`
  # would refuse the lock for lacking optional packages of other platforms
  # that this registry does not serve.
  (cd "$prefix" && npm install --silent --no-audit --no-fund)
  touch "$prefix/.complete"
fi
# The WIT to build against: Sluice's world plus an import of
# wasi:filesystem/preopens, so that JavaScript can open files in the
# folders the configuration grants (`getDirectories()`; the engine imports
# wasi:filesystem anyway, so the component asks for nothing more). The WASI
# WIT comes from the installed jco, at the version its engine imports.
wit="$(mktemp -d)"
trap 'rm -rf "$wit"' EXIT
cp -rL "$here/wit/." "$wit/"
for package in filesystem io clocks; do
  cp -r "$prefix/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12/wasi-$package" "$wit/deps/"
done
printf 'package sluice:plugin@0.1.0;\n\nworld %s-with-files {\n    include %s;\n    import wasi:filesystem/preopens@0.2.12;\n}\n' \
  "$world" "$world" > "$wit/files.wit"
# Sluice provides no wasi:http: leave out the features that import it.
"$prefix/node_modules/.bin/jco" componentize "$here/plugin.js" \
  --wit "$wit" --world-name "$world-with-files" \
  -d http -d fetch-event -o "$out" > /dev/null
echo "built $out ($(stat -c %s "$out") bytes) in $(( $(date +%s) - started )) s"
