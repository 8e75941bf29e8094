#!/usr/bin/env bash
# The device build per target: bash benches/devices.sh
#
# Builds `sluice` with Cargo.toml's `device` profile for this machine
# (x86_64) and, with Debian's cross toolchains (.ci/cross.sh), for aarch64
# and armv7 (plugins on Pulley, wasmtime's interpreter), then measures on
# this machine each binary's size and the digits job: `sluice infer` over
# the 450 held-out digits as a new process (plugins compiled by an untimed
# first run), natively and under qemu-user, alternating with the Python
# peer's digits pipeline (benches/peer) on the same inputs. Results:
# target/bench/devices.json and BENCHMARKS.md's device section. The first
# time, about an hour of builds on 2 cores (LTO, three targets).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench
ROUNDS="${ROUNDS:-3}"
mkdir -p "$OUT"

targets=(${TARGETS:-x86_64 aarch64 armv7})
if [ "${BUILD:-1}" = 1 ]; then # BUILD=0: measure the binaries already built
  echo "== builds"
  for target in "${targets[@]}"; do
    case "$target" in
      x86_64) cargo build --profile device -p sluice ;;
      *) PROFILE=device BUILD_ONLY=1 bash .ci/cross.sh "$target" ;;
    esac
  done
fi

echo "== the peer's Python"
VENV="${TMPDIR:-/tmp}/sluice-models-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/peer/requirements.txt
PY="$VENV/bin/python"

# The aarch64 run gets a 4 GiB address space: qemu-user 7.2 keeps a
# descriptor for every page a process reserves, and the plugin engine's
# usual pool reserves 97 GiB; in 4 GiB it takes compact memories, as a
# small board does (and as a 32-bit one always does).
T=${CARGO_TARGET_DIR:-target}
declare -A run=(
  [x86_64]="$T/device/sluice"
  [aarch64]="prlimit --as=$((4 << 30)) qemu-aarch64 -L /usr/aarch64-linux-gnu $T/aarch64-unknown-linux-gnu/device/sluice"
  [armv7]="qemu-arm -L /usr/arm-linux-gnueabihf $T/armv7-unknown-linux-gnueabihf/device/sluice"
)
json="$OUT/devices.json"
echo "{\"machine\": true, \"when\": \"$(date -u '+%Y-%m-%d %H:%M')\", \"commit\": \"$(git rev-parse --short HEAD)\", \"cores\": $(nproc)}" > "$json"
job() { # target -> the command running the digits job on it
  echo "${run[$1]} infer --config examples/digits/sluice.toml --data-dir $OUT/devices-$1 models/digits/heldout/*.png"
}
for target in "${targets[@]}"; do
  binary=${run[$target]##* }
  echo "{\"target\": \"$target\", \"size_bytes\": $(stat -c %s "$binary")}" >> "$json"
  rm -rf "$OUT/devices-$target"
  $(job "$target") > /dev/null # fills its compiled-plugin cache and execution choice
done

echo "== the digits job, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  for target in "${targets[@]}"; do
    /usr/bin/time -o "$OUT/devices-time.txt" -f '%e %M' $(job "$target") > "$OUT/devices-$target.jsonl"
    python3 benches/devices_report.py --summarize "$target" "$round" "$OUT/devices-$target.jsonl" "$OUT/devices-time.txt" >> "$json"
  done
  "$PY" benches/peer/pipeline.py --job digits --repeat 1 --out "$OUT/devices-peer.json"
  python3 benches/devices_report.py --summarize-peer "$round" "$OUT/devices-peer.json" >> "$json"
done
python3 benches/devices_report.py "$json" BENCHMARKS.md
echo "== wrote $json and BENCHMARKS.md's device section"
