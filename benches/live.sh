#!/usr/bin/env bash
# Latency on the device: bash benches/live.sh
#
# A steady stream of digits (100, 1 000 and 5 000 inputs/s, 10 s each) into
# `sluice run` on examples/mqtt/sluice.toml and into the Python peer
# (benches/peer/live.py: paho-mqtt, Pillow, numpy, onnxruntime, SQLite),
# one after the other, through a real mosquitto (MQTT in, results out) and
# as synchronous HTTP calls; sluice-live-bench (benches/live/) sends and
# times. Raw results in target/bench/live.json, BENCHMARKS.md's "On the
# device: latency" section rendered from them. About 5 minutes after the
# release build. Needs mosquitto (installed here when missing) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench
mkdir -p "$OUT"
started=$(date +%s)
if ! command -v mosquitto > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends mosquitto > /dev/null
fi
rustup target add wasm32-wasip2
cargo build --release -p sluice -p sluice-live-bench
VENV="${TMPDIR:-/tmp}/sluice-models-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/peer/requirements.txt
{
  echo "{\"machine\": true, \"when\": \"$(date -u '+%Y-%m-%d %H:%M')\", \"commit\": \"$(git rev-parse --short HEAD)\", \"cores\": $(nproc), \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\"}"
  target/release/sluice-live-bench --sluice target/release/sluice --python "$VENV/bin/python" \
    --rates "${RATES:-100,1000,2000,5000}" --seconds "${SECONDS_PER_RUN:-10}" --rounds "${ROUNDS:-2}" \
    --work-dir "$OUT/live" "$@"
} > "$OUT/live.json"
python3 benches/live_report.py "$OUT/live.json" BENCHMARKS.md
echo "== wrote $OUT/live.json and BENCHMARKS.md's live section in $(( $(date +%s) - started )) s"
