#!/usr/bin/env bash
# Builds the plugin as a WebAssembly component: build.sh [OUT.wasm]
# (default plugin.wasm next to this script).
#
# Needs clang with a WASI sysroot (Debian/Ubuntu: `apt install clang lld
# wasi-libc libclang-rt-dev-wasm32`; or the WASI SDK, with WASI_SDK_PATH
# set) and Rust (rustup): its `wasm-component-ld` links the component, and
# wit-bindgen (pinned below) is installed with cargo on first use into
# $SLUICE_TOOLCHAIN_DIR (default .toolchain/ next to this script; share one
# across projects by setting it).
set -euo pipefail
world=postprocessor
wit_bindgen=0.61.0 # the version sluice-guest, the Rust SDK, builds with

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:-$here/plugin.wasm}")"
toolchains="${SLUICE_TOOLCHAIN_DIR:-$here/.toolchain}"
bindgen="$toolchains/wit-bindgen-$wit_bindgen"
started=$(date +%s)
# `.complete` is written last: an install cut short is redone, not used.
if [ ! -f "$bindgen/.complete" ]; then
  echo "installing wit-bindgen $wit_bindgen into $bindgen" >&2
  rm -rf "$bindgen"
  cargo install --quiet --locked --root "$bindgen" wit-bindgen-cli --version "$wit_bindgen"
  touch "$bindgen/.complete"
fi

# The C compiler and the WASI sysroot (headers, libc, crt1-reactor.o).
if [ -n "${WASI_SDK_PATH:-}" ]; then
  cc="$WASI_SDK_PATH/bin/clang"
  sysroot="$WASI_SDK_PATH/share/wasi-sysroot"
elif [ -d /usr/include/wasm32-wasi ]; then
  cc="${CC:-clang}"
  sysroot=/usr # Debian's and Ubuntu's wasi-libc
else
  echo "no WASI sysroot: apt install clang lld wasi-libc libclang-rt-dev-wasm32, or set WASI_SDK_PATH" >&2
  exit 1
fi
# WASI 0.1 libc, adapted to 0.2 at link time (newer WASI SDKs call it wasip1).
libdir="$sysroot/lib/wasm32-wasi"
[ -d "$libdir" ] || libdir="$sysroot/lib/wasm32-wasip1"
target=(--target="$(basename "$libdir")" "--sysroot=$sysroot")
builtins="$("$cc" "${target[@]}" -print-libgcc-file-name)"
[ -f "$builtins" ] || { echo "no $builtins: apt install libclang-rt-dev-wasm32" >&2; exit 1; }
# The linker that makes a component (and adapts WASI 0.1 calls to 0.2).
rust_host=$(rustc -vV | sed -n 's/^host: //p')
linker="$(rustc --print sysroot)/lib/rustlib/$rust_host/bin/wasm-component-ld"

build="$here/.build"
rm -rf "$build" && mkdir -p "$build"
# wit-bindgen names every file it writes; only its errors are worth showing.
if ! log=$("$bindgen/bin/wit-bindgen" c "$here/wit" --world "$world" --out-dir "$build" 2>&1); then
  echo "$log" >&2
  exit 1
fi
for source in "$here/plugin.c" "$build/$world.c"; do
  "$cc" "${target[@]}" -O2 -Wall -Werror -Wno-unused-function -I"$build" -I"$here" \
    -c "$source" -o "$build/$(basename "$source" .c).o"
done
"$linker" --wasi-adapter reactor --no-entry --export=_initialize -o "$out" \
  "$libdir/crt1-reactor.o" "$build/plugin.o" "$build/$world.o" \
  "$build/${world}_component_type.o" -L"$libdir" -lc "$builtins"
echo "built $out ($(stat -c %s "$out") bytes) in $(( $(date +%s) - started )) s"
