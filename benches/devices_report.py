#!/usr/bin/env python3
"""The device builds' section of BENCHMARKS.md, from target/bench/devices.json.

Usage: python3 benches/devices_report.py target/bench/devices.json BENCHMARKS.md
replaces the section between the devices markers (benches/devices.sh runs
it); benches/report.py calls section() to keep it when it renders the rest.
`--summarize TARGET ROUND RESULTS.jsonl TIME.txt` and `--summarize-peer
ROUND PEER.json` turn one run into a JSON line of devices.json.
Standard library only.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sections  # noqa: E402

START, END = sections.markers("devices")
MIB = 1 << 20
HOW = {
    "x86_64": "natively",
    "aarch64": "under qemu-aarch64 (Cranelift's aarch64 code, tract's NEON kernels)",
    "armv7": "under qemu-arm (plugins on Pulley, tract's ARMv7 NEON kernels)",
}


def summarize(target, round_, results, timing):
    """One `sluice infer` run: items, wall time, peak RSS, stage times per item."""
    with open(timing) as f:
        seconds, peak_kib = f.read().split()[-2:]
    records = [json.loads(line) for line in open(results) if line.strip()]
    done = [r for r in records if r.get("kind") == "result"]

    def per_item(stage):
        # Each record carries its batch's time and size: the batch's share.
        total = sum(r["timings"][f"batch_{stage}_us"] / r["timings"]["batch_items"] for r in done)
        return round(total / max(1, len(done)), 1)

    return {
        "run": target, "round": int(round_), "items": len(records), "results": len(done),
        "seconds": float(seconds), "peak_rss_mib": round(int(peak_kib) / 1024, 1),
        "preprocess_us_per_item": per_item("preprocess"), "infer_us_per_item": per_item("infer"),
        "postprocess_us_per_item": per_item("postprocess"),
    }


def summarize_peer(round_, path):
    with open(path) as f:
        peer = json.load(f)
    return {"run": "peer", "round": int(round_), "items": peer["items"],
            "seconds": peer["seconds"], "peak_rss_mib": peer["peak_rss_mib"]}


def section(path):
    """The section's markdown from the JSON lines at path, or None."""
    if not os.path.exists(path):
        return None
    machine, sizes, runs = {}, {}, {}
    for line in open(path):
        item = json.loads(line)
        if item.get("machine"):
            machine = item
        elif "size_bytes" in item:
            sizes[item["target"]] = item["size_bytes"]
        else:
            runs.setdefault(item["run"], []).append(item)
    if not runs.get("peer"):
        return None
    med = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
    peer_rss = med("peer", "peak_rss_mib")
    out = [START, "## Device builds per target", ""]
    out.append(
        f"`bash benches/devices.sh` at commit {machine.get('commit')}, {machine.get('when')}, "
        f"{machine.get('cores')} cores (x86_64). `sluice` built with Cargo.toml's `device` profile "
        "(fat LTO, one codegen unit, stripped, panics unwind) for each target; the digits job is "
        "`sluice infer` over the 450 held-out digits as a new process (plugins and the execution "
        f"choice from its cache), {len(runs['peer'])} rounds alternating with the Python peer's digits "
        "pipeline (`benches/peer/pipeline.py --job digits`), medians. Emulated runs are on this x86 "
        "machine under qemu-user (aarch64 in a 4 GiB address space, so its plugin memories are "
        "compact, as armv7's always are): their times and memory include the emulator (its "
        "translated code, its page descriptors), so they show that the build works and how the "
        "targets compare, not what a board does.")
    out.append("")
    out.append("| target | binary | how it ran | results | wall time | peak RSS | RSS / peer | plugins µs/item | inference µs/item |")
    out.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target in ("x86_64", "aarch64", "armv7"):
        if target not in runs:
            continue
        plugins = med(target, "preprocess_us_per_item") + med(target, "postprocess_us_per_item")
        out.append(
            f"| {target} | {sizes.get(target, 0) / MIB:.1f} MiB | {HOW[target]} | "
            f"{min(r['results'] for r in runs[target])}/{runs[target][0]['items']} | "
            f"{med(target, 'seconds'):.2f} s | {med(target, 'peak_rss_mib'):.1f} MiB | "
            f"{med(target, 'peak_rss_mib') / peer_rss:.2f}x | {plugins:,.1f} | {med(target, 'infer_us_per_item'):,.1f} |")
    out.append(f"| peer (Python 3, onnxruntime, Pillow) | | natively | {runs['peer'][0]['items']} | "
               f"{med('peer', 'seconds'):.2f} s (pipeline only) | {peer_rss:.1f} MiB | 1.00x | | |")
    out.append("")
    if "x86_64" in runs:
        ratio = med("x86_64", "peak_rss_mib") / peer_rss
        out.append(
            f"**Target** (the digits job's peak RSS at most a quarter of the peer's): "
            f"{ratio:.2f}x, **{'met' if ratio <= 0.25 else 'missed'}** (where it goes: docs/devices.md, "
            "\"The minimum board\").")
    if "armv7" in runs and "aarch64" in runs:
        plugin = lambda t: med(t, "preprocess_us_per_item") + med(t, "postprocess_us_per_item")  # noqa: E731
        out.append("")
        out.append(
            f"**Pulley** (armv7's plugins, interpreted) vs Cranelift's aarch64 code, both under qemu on this "
            f"machine: {plugin('armv7') / plugin('aarch64'):.1f}x the plugin time per item. A rough measure: qemu "
            "emulates the two instruction sets at different speeds, as inference shows (native code on both, "
            f"tract's NEON kernels: armv7 / aarch64 = {med('armv7', 'infer_us_per_item') / med('aarch64', 'infer_us_per_item'):.2f}x). "
            "Heavier plugins (JPEG decoding, resizing) would feel the interpreter most; "
            "no ARM board was available to measure one natively.")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--summarize":
        print(json.dumps(summarize(*sys.argv[2:6])))
    elif sys.argv[1] == "--summarize-peer":
        print(json.dumps(summarize_peer(*sys.argv[2:4])))
    else:
        data, target = sys.argv[1], sys.argv[2]
        text = section(data)
        if text is None:
            sys.exit(f"no device runs in {data}")
        sections.write(target, text, "devices")
