#!/usr/bin/env python3
"""The live latency section of BENCHMARKS.md, from target/bench/live.json.

Usage: python3 benches/live_report.py target/bench/live.json BENCHMARKS.md
replaces the section between the live markers in BENCHMARKS.md (or appends
it); benches/report.py calls section() to keep it when it renders the rest.
Standard library only.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sections  # noqa: E402

START, END = sections.markers("live")
# The target: a result on the device within 10 ms (p99) at 1 000 inputs/s.
P99_BOUND_MS = 10.0
TARGET_RATE = 1000
# A rate is sustained when every input is answered and the p99 stays under
# this (a queue that does not grow over the run): the two sides are
# compared at this same bound.
SUSTAIN_P99_MS = 100.0


def fmt(value, digits=1):
    return "—" if value is None else f"{value:,.{digits}f}"


def sustained(runs, side, mode):
    """The highest rate at which every round of side answered every input
    with p99 under SUSTAIN_P99_MS, or None."""
    best = None
    for rate in sorted({r["rate"] for r in runs}):
        these = [r for r in runs if r["side"] == side and r["mode"] == mode and r["rate"] == rate]
        if these and all(r["lost"] == 0 and (r["p99_ms"] or 1e9) <= SUSTAIN_P99_MS for r in these):
            best = rate
    return best


def section(path):
    """The section's markdown from the JSON lines at path, or None."""
    if not os.path.exists(path):
        return None
    runs, machine = [], {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            item = json.loads(line)
            if item.get("machine"):
                machine = item
            else:
                runs.append(item)
    if not runs:
        return None
    seconds = runs[0]["seconds"]
    out = [START, "## On the device: latency under a steady stream", ""]
    out.append(
        f"`bash benches/live.sh` ({machine.get('when', '?')}, commit {machine.get('commit', '?')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('cpu', '?')}; everything on this one machine): "
        "a real mosquitto, and each side started fresh for each run, warmed up with 100 inputs, then sent "
        f"a steady stream of digits PNGs for {seconds} s, open loop (inputs are sent when due, whatever "
        "the side does, so its queueing shows in the latency). **Sluice** is `sluice run` on "
        "[`examples/mqtt/sluice.toml`](examples/mqtt/sluice.toml) as shipped (ports and folders moved): "
        "MQTT ingest acknowledging each message once journaled, the batch scheduler, the bundled plugins, "
        "tract, the outbox, and the `bus` consumer publishing each result at QoS 1 once stored. The "
        "**peer** is [`benches/peer/live.py`](benches/peer/live.py): paho-mqtt with manual "
        "acknowledgements, Pillow, numpy and onnxruntime, the same discipline (journaled in SQLite "
        "before the acknowledgement, stored before the result is published), batches of what has arrived "
        "(up to 32); its synchronous calls run one at a time per request thread. Latency is from the "
        "moment an input was due to the moment its result arrived (MQTT: at a subscriber of "
        "`sluice/results/#`; HTTP: the answer to `POST /v1/infer/digits`). CPU is the side's own process "
        "(user + system) per input answered; the broker and the load generator "
        "([`benches/live/`](benches/live/)) share the machine with it.",
    )
    out.append("")
    for mode, title in (("mqtt", "MQTT in, results out through the broker"), ("http", "Synchronous calls (`POST /v1/infer/digits`)")):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        out += [f"### {title}", "",
                "| inputs/s | side | round | answered | p50 ms | p99 ms | max ms | answered/s | CPU ms/input | peak RSS MiB |",
                "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sorted(mine, key=lambda r: (r["rate"], r["round"], r["side"] != "sluice")):
            out.append(
                f"| {r['rate']:,} | {r['side']} | {r['round'] + 1} | {r['received']:,} of {r['sent']:,} | "
                f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['max_ms'], 1)} | "
                f"{fmt(r['achieved_per_s'], 0)} | {fmt(r['cpu_ms_per_input'], 3)} | {fmt(r['peak_rss_mib'], 1)} |"
            )
        out.append("")
        at_target = [r for r in mine if r["side"] == "sluice" and r["rate"] == TARGET_RATE]
        if at_target:
            worst = max((r["p99_ms"] or 1e9) for r in at_target)
            lost = sum(r["lost"] for r in at_target)
            verdict = "met" if worst <= P99_BOUND_MS and lost == 0 else "**not met**"
            out.append(
                f"- Target p99 under {P99_BOUND_MS:g} ms at {TARGET_RATE:,} inputs/s: {verdict} "
                f"(worst round {fmt(worst, 2)} ms, {lost} unanswered)."
            )
        ours, theirs = sustained(runs, "sluice", mode), sustained(runs, "peer", mode)
        tested = max(r["rate"] for r in mine)
        if ours and theirs:
            ratio = ours / theirs
            capped = " (the highest rate tested: the ratio is at least this)" if ours == tested else ""
            verdict = "met" if ratio >= 2 else "**not met**"
            out.append(
                f"- Sustained (every input answered, p99 under {SUSTAIN_P99_MS:g} ms, in every round): Sluice "
                f"{ours:,}/s{capped}, the peer {theirs:,}/s: {ratio:.1f}x, target 2x {verdict}."
            )
        elif ours:
            out.append(
                f"- Sustained (every input answered, p99 under {SUSTAIN_P99_MS:g} ms, in every round): Sluice "
                f"{ours:,}/s; the peer none of the rates tested."
            )
        else:
            out.append(f"- Sluice sustained none of the rates tested (every input answered, p99 under {SUSTAIN_P99_MS:g} ms).")
        both = [rate for rate in sorted({r["rate"] for r in mine})
                if all(r["lost"] == 0 for r in mine if r["rate"] == rate)]
        if both:
            rate = max(both)
            cpu = {side: statistics.median([r["cpu_ms_per_input"] for r in mine if r["side"] == side and r["rate"] == rate])
                   for side in ("sluice", "peer")}
            out.append(
                f"- CPU per input at {rate:,}/s (the highest rate both answered in full; median of the rounds): "
                f"Sluice {cpu['sluice']:.3f} ms, the peer {cpu['peer']:.3f} ms "
                f"(Sluice uses {cpu['sluice'] / cpu['peer']:.2f}x the peer's)."
            )
        stages = [r for r in mine if r["side"] == "sluice" and r["rate"] == TARGET_RATE and r.get("stages_ms")]
        if stages:
            worst = max(stages, key=lambda r: r["p99_ms"] or 0)["stages_ms"]
            parts = [f"{name} {worst[name + ' p99']:.1f}" for name in
                     ("ingest_accept", "preprocess", "inference", "postprocess", "outbox_commit", "end_to_end")
                     if name + " p99" in worst]
            parts += [f"{k[:-4]} {v:.0f}" for k, v in worst.items() if k.startswith("to consumer") and k.endswith("p99")]
            out.append(
                f"- Where the time goes at {TARGET_RATE:,}/s, Sluice's own p99 per stage in ms (its `/metrics`, "
                f"the worst round; `end_to_end` is acceptance to stored, `to consumer` acceptance to the broker's "
                f"PUBACK, both in whole ms): " + ", ".join(parts) + "."
            )
        out.append("")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    text = section(sys.argv[1])
    if text is None:
        sys.exit(f"{sys.argv[1]}: no runs")
    sections.write(sys.argv[2], text, "live")
