#!/usr/bin/env bash
# The upstream load test: bash benches/fleet.sh
#
# Simulated devices (10, 100, then 1000 by default: DEVICES=... over HTTP,
# MQTT_DEVICES=... through the broker) against two
# sluice-collector processes on one real PostgreSQL, over HTTP and through a
# real mosquitto with the shipped setup (deploy/mosquitto/: an account per
# device, the ACL, signed acknowledgements checked by every device), on this machine; results into target/bench/fleet.json and
# BENCHMARKS.md's "Upstream at fleet scale" section. Then the fault phase
# (FAULT_SECONDS=45, FAULT_DEVICES=50 per transport; 0 seconds for none):
# a collector SIGKILLed and restarted, mosquitto restarted, PostgreSQL
# crashed with `-m immediate`, the other collector SIGKILLed; and at the
# end every device's results are checked id by id: it exits 1 on any
# lost, duplicated or unexpected result. Needs Debian's postgresql and
# mosquitto (installed here when missing). About 5 minutes after the
# release builds (a few minutes more the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench
mkdir -p "$OUT"
if ! ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 || ! command -v mosquitto > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql mosquitto > /dev/null
fi
cargo build --release -p sluice-collector -p sluice-fleet-bench
{
  echo "{\"machine\": true, \"when\": \"$(date -u +%Y-%m-%d)\", \"cores\": $(nproc)}"
  target/release/sluice-fleet-bench --collector target/release/sluice-collector \
    --devices "${DEVICES:-10,100,1000}" --mqtt-devices "${MQTT_DEVICES:-10,100,1000}" \
    --seconds "${SECONDS_PER_RUN:-15}" \
    --fault-seconds "${FAULT_SECONDS:-45}" --fault-devices "${FAULT_DEVICES:-50}" "$@"
} > "$OUT/fleet.json"
python3 benches/fleet_report.py "$OUT/fleet.json" BENCHMARKS.md
echo "== wrote $OUT/fleet.json and BENCHMARKS.md's fleet section"
