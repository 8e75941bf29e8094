#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: bash benches/run.sh
#
# Runs Sluice (sluice-bench, release build) and its peer (Python +
# onnxruntime, benches/peer/) side by side on this machine, keeps every raw
# result as JSON under target/bench/, and renders BENCHMARKS.md from them.
# Takes about 15 minutes after the release builds (the first of which takes
# about 15 minutes more on 2 cores). Needs python3 and PyPI for the peer.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
ROUNDS="${ROUNDS:-3}"   # alternating Sluice/peer rounds per pipeline job
mkdir -p "$OUT"
rm -f "$OUT"/*.json
# What was measured, and when: the report says so however often it is re-rendered.
printf '{"commit": "%s", "local_changes": %s, "date": "%s"}\n' \
  "$(git rev-parse --short HEAD)" \
  "$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo true || echo false)" \
  "$(date -u '+%Y-%m-%d %H:%M')" > "$OUT/run.json"

echo "== toolchain and builds"
rustup target add wasm32-wasip2
# The runtime-only build (no compiler) first, then the full one: both land in
# target/release, and the full one must be there at the end.
cargo build --release -p sluice --no-default-features --features bundled-plugins
cp target/release/sluice "$OUT/sluice-runtime-only"
# The full build also has the optional onnxruntime engine (loaded at run time
# from the peer's wheel, below): the pipelines run on tract and on `auto`.
cargo build --release -p sluice -p sluice-benches --features sluice/onnxruntime
cp target/release/sluice "$OUT/sluice"
strip -o "$OUT/sluice.stripped" "$OUT/sluice"
strip -o "$OUT/sluice-runtime-only.stripped" "$OUT/sluice-runtime-only"
BENCH=target/release/sluice-bench

echo "== the peer's Python"
VENV="${TMPDIR:-/tmp}/sluice-models-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/peer/requirements.txt
PY="$VENV/bin/python"
ORT_DYLIB_PATH="$(echo "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*)"
export ORT_DYLIB_PATH
[ -f "$OUT/mobilenetv2.onnx" ] || "$PY" models/mobilenetv2/make_mobilenetv2.py "$OUT/mobilenetv2.onnx"
MOBILENET="$OUT/mobilenetv2.onnx"
CORES="$(nproc)"

echo "== engine: onnxruntime, then tract on the same inputs (twice, alternating)"
for round in 1 2; do
  "$PY" benches/peer/engine.py --data-dir "$OUT/peer-engine" --out "$OUT/engine-peer-$round.json" \
    --threads "1,$CORES" \
    digits=models/digits/digits_mlp.onnx \
    anomaly=models/anomaly/autoencoder.onnx \
    text-direction=models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx:x=Nx3x48x192 \
    mobilenetv2="$MOBILENET"
  "$BENCH" engine --peer-dir "$OUT/peer-engine" > "$OUT/engine-sluice-$round.json"
done

echo "== pipelines: Sluice and the peer, alternating"
# Sluice runs as a restarted device does: compiled plugins and the measured
# execution choice come from its cache, filled by one untimed run.
CACHE="$OUT/cache"
rm -rf "$CACHE" # measured by this build, not remembered from another
for job in digits anomaly mobilenet text-direction; do
  case "$job" in
    # Runs of several seconds each: a steady state, as on a device, where
    # a second or less is mostly filling and draining the pipeline.
    mobilenet) repeat=20; extra=(--model "$MOBILENET" --images-dir "$OUT/images") ;;
    text-direction) repeat=40; extra=(--images-dir "$OUT/images") ;;
    *) repeat=20; extra=() ;;
  esac
  # The conv nets also run on `engine = "auto"` (onnxruntime when it is
  # faster and agrees with tract).
  engines=(tract)
  case "$job" in mobilenet | text-direction) engines=(tract auto) ;; esac
  "$PY" benches/peer/pipeline.py --job "$job" --repeat 1 --threads "$CORES" "${extra[@]}" > /dev/null
  for engine in "${engines[@]}"; do
    "$BENCH" pipeline --job "$job" --engine "$engine" --repeat 1 --cache-dir "$CACHE" "${extra[@]}" > /dev/null
  done
  for round in $(seq "$ROUNDS"); do
    for engine in "${engines[@]}"; do
      side=sluice
      [ "$engine" = auto ] && side=auto
      "$BENCH" pipeline --job "$job" --engine "$engine" --repeat "$repeat" --cache-dir "$CACHE" "${extra[@]}" \
        > "$OUT/pipeline-$job-$side-$round.json"
    done
    "$PY" benches/peer/pipeline.py --job "$job" --repeat "$repeat" --threads "$CORES" "${extra[@]}" \
      --out "$OUT/pipeline-$job-peer-$round.json"
  done
done

echo "== arrival patterns: a steady stream at half the burst's rate (at most 200 per second: one transaction per input), and one input at a time (tract)"
for job in digits anomaly mobilenet text-direction; do
  extra=()
  case "$job" in
    mobilenet) extra=(--model "$MOBILENET" --images-dir "$OUT/images") ;;
    text-direction) extra=(--images-dir "$OUT/images") ;;
  esac
  rate="$("$PY" -c 'import json,sys; print(round(min(json.load(open(sys.argv[1]))["items_per_s"] / 2, 200), 1))' "$OUT/pipeline-$job-sluice-1.json")"
  "$BENCH" pipeline --job "$job" --engine tract --repeat 2 --cache-dir "$CACHE" --arrival "steady:$rate" "${extra[@]}" \
    > "$OUT/pipeline-arrival-$job-steady.json"
  "$BENCH" pipeline --job "$job" --engine tract --repeat 1 --cache-dir "$CACHE" --arrival single "${extra[@]}" \
    > "$OUT/pipeline-arrival-$job-single.json"
done

echo "== overheads: plugin boundary, scheduler, batching"
"$BENCH" overheads --mobilenet "$MOBILENET" --images-dir "$OUT/images" > "$OUT/overheads.json"

echo "== start-up"
"$BENCH" startup --sluice "$OUT/sluice" --runtime-only "$OUT/sluice-runtime-only" > "$OUT/startup.json"

echo "== outbox and sync"
"$BENCH" outbox > "$OUT/outbox.json"

echo "== watching: metrics and drift per item"
"$BENCH" observe > "$OUT/observe.json"

echo "== report"
"$PY" benches/report.py "$OUT" > "$OUT/BENCHMARKS.md"
cp "$OUT/BENCHMARKS.md" BENCHMARKS.md
echo "wrote BENCHMARKS.md"
