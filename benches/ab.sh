#!/usr/bin/env bash
# A/B one commit against the working tree, end to end, in one run:
#   bash benches/ab.sh <old-commit> [rounds]
#
# Builds `sluice-bench` (release) of <old-commit> in a git worktree beside
# this checkout (its own target dir: the first build takes ~25 minutes on 2
# cores), then alternates old/new `sluice-bench pipeline` runs on the digits
# and anomaly jobs, each with its own warm cache, and prints the new/old
# throughput ratio per pair and its median. Alternating in one run is what
# makes the ratio meaningful on a shared, noisy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
old="${1:?usage: benches/ab.sh <old-commit> [rounds]}"
rounds="${2:-4}"
out=target/bench/ab
tree="target/bench/ab-tree"
mkdir -p "$out"
rm -rf "$tree"; git worktree prune
git worktree add --detach "$tree" "$old" > /dev/null
trap 'git worktree remove --force "$tree"' EXIT
CARGO_TARGET_DIR="$PWD/target/bench/ab-target" cargo build --release -p sluice-benches --manifest-path "$tree/Cargo.toml"
cargo build --release -p sluice-benches
OLD="$PWD/target/bench/ab-target/release/sluice-bench"
NEW="$PWD/target/release/sluice-bench"
for job in digits anomaly; do
  "$OLD" pipeline --job "$job" --repeat 1 --cache-dir "$out/cache-old" > /dev/null
  "$NEW" pipeline --job "$job" --repeat 1 --cache-dir "$out/cache-new" > /dev/null
  for round in $(seq "$rounds"); do
    "$OLD" pipeline --job "$job" --repeat 20 --cache-dir "$out/cache-old" > "$out/$job-old-$round.json"
    "$NEW" pipeline --job "$job" --repeat 20 --cache-dir "$out/cache-new" > "$out/$job-new-$round.json"
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for job in ("digits", "anomaly"):
    rate = lambda v, r: json.load(open(f"{out}/{job}-{v}-{r}.json"))["items_per_s"]
    pairs = [(rate("old", r), rate("new", r)) for r in range(1, rounds + 1)]
    ratios = [n / o for o, n in pairs]
    print(f"{job}: new/old items/s per pair {[round(r, 3) for r in ratios]}, median {statistics.median(ratios):.3f}")
PY
