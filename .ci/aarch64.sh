#!/usr/bin/env bash
# Sluice on aarch64, under emulation: cross-build the device binary and the
# integration tests with Debian's aarch64 toolchain, then run under
# qemu-user the quick start's demo and the tests of what differs per CPU:
# the plugin sandbox (Cranelift's aarch64 backend: deadlines, memory caps,
# traps, grants) and inference (tract's NEON kernels against the models'
# reference results, computed on x86 with onnxruntime).
#
#   bash .ci/aarch64.sh        (about 15 minutes on 2 cores; not yet part of .ci/run)
#
# Under qemu-user /proc/cpuinfo is the host's, so tract finds no aarch64
# CPU part and runs its generic NEON kernels (NEON is part of every aarch64
# CPU); the inference tests run a second time with TRACT_CPU_AARCH64_KIND=a53
# for the in-order Cortex-A53 kernels tract picks on small boards.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { echo "== aarch64: $1 ($(( $(date +%s) - started )) s)"; }

target=aarch64-unknown-linux-gnu
rustup target add "$target"
missing=()
command -v aarch64-linux-gnu-gcc > /dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

# The linker, and the C compiler and archiver for the C parts (SQLite, zstd).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# `cargo test --target` runs the test binary through qemu.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"

step "cross build"
cargo build -p sluice --target "$target"
cargo build -p sluice-collector # the demo's upstream runs on this machine, as it would off the device

step "demo under qemu-aarch64"
SLUICE_COLLECTOR="$PWD/target/debug/sluice-collector" \
  qemu-aarch64 -L /usr/aarch64-linux-gnu "target/$target/debug/sluice" demo | tee target/aarch64-demo.log
# The demo itself fails unless every result was delivered; the accuracy must
# be the model's (models/digits/expected.json, onnxruntime on x86).
accuracy=$(python3 -c 'import json; print("%.4f" % json.load(open("models/digits/expected.json"))["onnx_accuracy"])')
grep -qE "accuracy: +$accuracy " target/aarch64-demo.log || {
  echo "aarch64: the demo's accuracy is not the model's $accuracy" >&2
  exit 1
}

step "sandbox and inference tests under qemu-aarch64"
cargo test -p sluice --target "$target" --test all -- plugins:: inference::
step "inference tests with tract's Cortex-A53 kernels"
TRACT_CPU_AARCH64_KIND=a53 cargo test -p sluice --target "$target" --test all -- inference::
step "done"
