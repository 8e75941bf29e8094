#!/usr/bin/env bash
# Sluice on ARM, under emulation: cross-build with Debian's cross toolchains
# and run under qemu-user what differs per CPU.
#
#   bash .ci/cross.sh aarch64   (.ci/run runs it) the dev build; under
#       qemu-aarch64 the quick start's demo (the model's accuracy, every result
#       delivered), the plugin sandbox tests (Cranelift's aarch64 backend:
#       deadlines, memory caps, traps, grants) and the inference tests
#       (tract's NEON kernels against the reference results computed on x86
#       with onnxruntime), these twice: generic and Cortex-A53 kernels.
#   bash .ci/cross.sh armv7     the device build (Cargo.toml's `device`
#       profile) for 32-bit ARM; under qemu-arm the demo, its plugins run by
#       Pulley, wasmtime's interpreter (Cranelift has no 32-bit backend).
#
# Under qemu-user /proc/cpuinfo is the host's, so tract finds no ARM CPU
# part: on aarch64 it runs its generic NEON kernels (NEON is part of every
# aarch64 CPU), and TRACT_CPU_AARCH64_KIND=a53 forces the in-order Cortex-A53
# ones it picks on small boards.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: cross.sh aarch64|armv7}
started=$(date +%s)
step() { echo "== $arch: $1 ($(( $(date +%s) - started )) s)"; }
case "$arch" in
  aarch64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu qemu=qemu-aarch64 libc=libc6-dev-arm64-cross profile=dev ;;
  armv7) target=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf qemu=qemu-arm libc=libc6-dev-armhf-cross profile=device ;;
  *) echo "cross.sh: unknown architecture $arch (aarch64 or armv7)" >&2; exit 2 ;;
esac
profile=${PROFILE:-$profile} # PROFILE=device BUILD_ONLY=1: what benches/devices.sh measures

step "toolchain"
rustup target add "$target"
missing=()
command -v "$gnu-gcc" > /dev/null || missing+=("gcc-$gnu" "$libc")
command -v "$qemu" > /dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
# The linker, and the C compiler and archiver for the C parts (SQLite, zstd,
# ring; tract's ARM kernels are assembly built by the C compiler).
upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
lower=$(echo "$target" | tr '-' '_')
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" "CC_${lower}=$gnu-gcc" "AR_${lower}=$gnu-ar"
# `cargo test --target` runs the test binary through qemu, in an address
# space limited to 16 GiB: the plugin engine cannot reserve its wide pool
# (tens of GiB) and falls back to compact memories, as on a small board.
# (qemu-user 7.2 also keeps a descriptor for every reserved page: the wide
# pools of all the tests at once took 22 GB of memory.)
export "CARGO_TARGET_${upper}_RUNNER=prlimit --as=$((16 << 30)) $qemu -L /usr/$gnu"
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
dir=$target_dir/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")

step "cross build ($profile profile)"
cargo build -p sluice --target "$target" --profile "$profile"
[ -z "${BUILD_ONLY:-}" ] || exit 0
cargo build -p sluice-collector # the demo's upstream runs on this machine, as it would off the device

step "demo under $qemu"
log=$dir/demo.log
SLUICE_COLLECTOR="$target_dir/debug/sluice-collector" \
  "$qemu" -L "/usr/$gnu" "$dir/sluice" demo | tee "$log"
# The demo fails unless every result was delivered; the accuracy must be
# the model's (models/digits/expected.json, onnxruntime on x86).
accuracy=$(python3 -c 'import json; print("%.4f" % json.load(open("models/digits/expected.json"))["onnx_accuracy"])')
grep -qE "accuracy: +$accuracy " "$log" || {
  echo "$arch: the demo's accuracy is not the model's $accuracy" >&2
  exit 1
}

if [ "$arch" = armv7 ]; then
  # No test binary for armv7 (it would double the build): the sandbox's
  # limits checked through `sluice plugin run` on the misbehaving fixture.
  step "plugin sandbox on Pulley under $qemu"
  sandbox=$(mktemp -d)
  printf hello > "$sandbox/1-ok"; printf loop > "$sandbox/2-loop"; printf alloc:64 > "$sandbox/3-alloc"
  printf panic > "$sandbox/4-panic"; printf open:/etc/passwd > "$sandbox/5-open"; printf after > "$sandbox/6-ok"
  printf '[plugins.m]\npath = "%s"\ntimeout_ms = 500\nmemory_mb = 16\n' \
    "$target_dir/wasm-plugins/wasm32-wasip2/$([ "$profile" = dev ] && echo quick || echo release)/misbehave.wasm" > "$sandbox/sluice.toml"
  "$qemu" -L "/usr/$gnu" "$dir/sluice" plugin run --config "$sandbox/sluice.toml" --data-dir "$sandbox/data" \
    "$sandbox"/[1-6]-* > "$sandbox/out.jsonl" || true
  python3 - "$sandbox/out.jsonl" <<'CHECK'
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
got = [l.get("error", {}).get("message", "ok") for l in lines]
want = ["ok", "deadline of 500 ms exceeded", "memory cap exceeded", "wasm trap", "No such file", "ok"]
bad = [(w, g) for w, g in zip(want, got) if w not in g]
if len(lines) != len(want) or bad:
    sys.exit(f"armv7 sandbox: expected {want}, got {got}")
print("armv7 sandbox: deadline, memory cap, trap and no grants hold on Pulley; the neighbours ran")
CHECK
  rm -rf "$sandbox"
fi

if [ "$arch" = aarch64 ]; then
  step "sandbox and inference tests under $qemu"
  cargo test -p sluice-tests --target "$target" --test all -- plugins:: inference::
  step "inference tests with tract's Cortex-A53 kernels"
  TRACT_CPU_AARCH64_KIND=a53 cargo test -p sluice-tests --target "$target" --test all -- inference::
fi
step "done"
