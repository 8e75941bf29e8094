#!/usr/bin/env python3
"""Render BENCHMARKS.md from the JSON results benches/run.sh left in a folder.

Usage: python3 benches/report.py target/bench > BENCHMARKS.md

Every number in the report comes from those files (or, for the machine
description, from this machine); nothing is typed in by hand. Where Sluice
and its peer ran in alternating rounds, each ratio is computed per round and
the median ratio is reported, so that drift of a shared machine hits both
sides alike. Standard library only.
"""
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    path = os.path.join(OUT, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def rounds(pattern):
    return [load(os.path.basename(p)) for p in sorted(glob.glob(os.path.join(OUT, pattern)))]


def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def mem_gib():
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def fmt(x, digits=1):
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def verdict(ok):
    return "met" if ok else "**missed**"


lines = []
emit = lines.append

# The measured commit and date, as run.sh recorded them (else: now, here).
measured = load("run.json") or {}
commit = measured.get("commit") or run("git", "rev-parse", "--short", "HEAD")
dirty = ("x" if measured["local_changes"] else "") if "local_changes" in measured else \
    run("git", "status", "--porcelain", "--untracked-files=no")
date = measured.get("date") or f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
emit("# Sluice benchmarks")
emit("")
emit("Sluice side by side with the way a gateway developer would do the same job without it: "
     "Python with onnxruntime, Pillow, numpy and SQLite (`benches/peer/`). Both ran on the same "
     "machine in the same run; where they ran in alternating rounds, ratios are per round and the "
     "median is shown, because this machine is shared and absolute times drift.")
emit("")
emit(f"- **Command**: `bash benches/run.sh` (raw results: `{OUT}/*.json`; this file: "
     f"`python3 benches/report.py {OUT}`)")
emit(f"- **Date**: {date} UTC")
emit(f"- **Machine**: {cpu_model()}, {os.cpu_count()} cores, {mem_gib()} RAM, Linux {platform.release()}")
emit(f"- **Sluice**: commit {commit}{' (with local changes)' if dirty not in ('', '?') else ''}, "
     f"{run('rustc', '-V')}, release profile; tract-onnx 0.23.9, wasmtime 48.0.8")
peer_pipeline = (rounds("pipeline-digits-peer-*.json") or [None])[0]
if peer_pipeline:
    emit(f"- **Peer**: Python {peer_pipeline.get('python')}, onnxruntime {peer_pipeline.get('onnxruntime')}, "
         f"numpy {peer_pipeline.get('numpy')}, Pillow {peer_pipeline.get('pillow')}, "
         f"SQLite {peer_pipeline.get('sqlite')}")
emit("")

# ------------------------------------------------------------------ pipelines
pipeline_rows = {}
# (row, Sluice's runs, the peer's runs): MobileNetV2 runs on tract and on
# `engine = "auto"` (onnxruntime when built with it, faster and agreeing).
for job, ours_name, peer_name in (("digits", "digits-sluice", "digits-peer"),
                                   ("anomaly", "anomaly-sluice", "anomaly-peer"),
                                   ("mobilenet", "mobilenet-sluice", "mobilenet-peer"),
                                   ("mobilenet, engine auto", "mobilenet-auto", "mobilenet-peer"),
                                   ("text-direction", "text-direction-sluice", "text-direction-peer"),
                                   ("text-direction, engine auto", "text-direction-auto", "text-direction-peer")):
    ours = rounds(f"pipeline-{ours_name}-*.json")
    theirs = rounds(f"pipeline-{peer_name}-*.json")
    if not ours or not theirs:
        continue
    pairs = list(zip(ours, theirs))
    pipeline_rows[job] = {
        "sluice_ips": statistics.median(o["items_per_s"] for o in ours),
        "peer_ips": statistics.median(t["items_per_s"] for t in theirs),
        "speed": statistics.median(o["items_per_s"] / t["items_per_s"] for o, t in pairs),
        "sluice_rss": statistics.median(o["peak_rss_mib"] for o in ours),
        "rss_at_end": ours[0].get("rss_at_end") or {},
        "peer_rss_at_end": theirs[0].get("rss_at_end") or {},
        "peer_rss": statistics.median(t["peak_rss_mib"] for t in theirs),
        "rss": statistics.median(o["peak_rss_mib"] / t["peak_rss_mib"] for o, t in pairs),
        "items": ours[0]["items"],
        "rounds": len(pairs),
        "sluice_accuracy": ours[0].get("accuracy"),
        "peer_accuracy": theirs[0].get("accuracy"),
        "chosen": ours[0].get("chosen", {}),
        "engine": ours[0].get("engine", "tract"),
        "engine_choice": ours[0].get("engine_choice"),
        "peer_threads": theirs[0].get("threads"),
        "peer_batch": theirs[0].get("batch_size"),
        "vs_parts": statistics.median(o["vs_parts"] for o in ours) if all(o.get("vs_parts") for o in ours) else None,
        "parts": ours[0].get("parts_alone") or {},
    }

overheads = load("overheads.json") or {}
startup = load("startup.json") or {}
outbox = load("outbox.json") or {}
sched = {row["model"]: row for row in overheads.get("scheduler_vs_raw_tract", [])}

# ------------------------------------------------------------------ targets
emit("## Targets")
emit("")
emit("| target | measured | |")
emit("| --- | --- | --- |")
mobile = sched.get("MobileNetV2")
if mobile:
    low, high = mobile.get("overhead_percent_quartiles", [float("nan")] * 2)
    emit(f"| scheduler overhead over raw tract, MobileNetV2, same batches (8): at most 5% | "
         f"{mobile['overhead_percent']:+.1f}% (middle half of the pairs of runs: {low:+.1f}% to {high:+.1f}%) | "
         f"{verdict(mobile['overhead_percent'] <= 5)} |")
digits_sched = sched.get("digits MLP")
if digits_sched:
    emit(f"| scheduler overhead over raw tract, digits MLP, same batches (32): at most 20 µs per item | "
         f"{digits_sched['overhead_us_per_item']:.1f} µs | {verdict(digits_sched['overhead_us_per_item'] <= 20)} |")
for job in ("digits", "anomaly"):
    row = pipeline_rows.get(job)
    if row:
        emit(f"| {job} end to end: throughput at least the peer's | {row['speed']:.2f}x the peer | "
             f"{verdict(row['speed'] >= 1)} |")
        emit(f"| {job} end to end: peak RSS at most a quarter of the peer's | {row['rss']:.2f}x the peer | "
             f"{verdict(row['rss'] <= 0.25)} |")
for job, title in (("mobilenet", "MobileNetV2"), ("text-direction", "text direction")):
    row = pipeline_rows.get(job)
    if row:
        emit(f"| {title} end to end on tract alone: at least 0.5x the peer's throughput | {row['speed']:.2f}x the peer | "
             f"{verdict(row['speed'] >= 0.5)} |")
    row = pipeline_rows.get(f"{job}, engine auto")
    if row:
        emit(f"| {title} end to end with the onnxruntime engine (`auto`): at least 1.2x the peer's throughput | "
             f"{row['speed']:.2f}x the peer (engine chosen: {row['engine']}) | "
             f"{verdict(row['speed'] >= 1.2 and row['engine'] == 'onnxruntime')} |")
for job, engine in (("mobilenet", "tract"), ("mobilenet, engine auto", "onnxruntime")):
    row = pipeline_rows.get(job)
    ours, theirs = (row or {}).get("rss_at_end", {}), (row or {}).get("peer_rss_at_end", {})
    if ours.get("anon_mib") and theirs.get("anon_mib"):
        r = ours["anon_mib"] / theirs["anon_mib"]
        emit(f"| MobileNetV2 end to end on {row['engine']}: allocated memory at most the peer's | {r:.2f}x "
             f"({ours['anon_mib']:.0f} vs {theirs['anon_mib']:.0f} MiB) | {verdict(r <= 1)} |")
image_boundary = overheads.get("plugin_boundary_mobilenet")
if image_boundary:
    w, n = image_boundary["wasm_preprocess_us_per_item"], image_boundary["native_preprocess_us_per_item"]
    emit(f"| MobileNetV2 JPEG preprocessing in the wasm plugin: at most 1.3x the same code native | "
         f"{w / n:.2f}x ({w:.0f} vs {n:.0f} µs per item) | {verdict(w / n <= 1.3)} |")
    peer_pre = [t.get("preprocess_us_per_item") for t in rounds("pipeline-mobilenet-peer-*.json")]
    peer_pre = [p for p in peer_pre if p is not None]
    if peer_pre:
        p = statistics.median(peer_pre)
        emit(f"| MobileNetV2 JPEG preprocessing in the wasm plugin: no slower than the peer's Pillow path | "
             f"{w / p:.2f}x ({w:.0f} vs {p:.0f} µs per item) | {verdict(w <= p)} |")
for job, row in pipeline_rows.items():
    if row["vs_parts"] is not None:
        parts = row["parts"]
        emit(f"| {job} end to end: time per item at most 1.5x its parts' (model as the scheduler measured it, "
             f"plugins alone) | {row['vs_parts']:.2f}x ({1e6 / row['sluice_ips']:.0f} vs "
             f"{parts.get('sum_us_per_item', float('nan')):.0f} µs) | {verdict(row['vs_parts'] <= 1.5)} |")
warm = (startup.get("warm_cached") or {}).get("median_ms")
if warm is not None:
    emit(f"| cold start to the first digits result, plugins cached: under 100 ms | {warm:.0f} ms | "
         f"{verdict(warm < 100)} |")
emit("")

# ------------------------------------------------------------------ end to end
emit("## End to end: Sluice vs Python + onnxruntime")
emit("")
emit("Same inputs, same machine, alternating runs. **Sluice**: the agent accepts the inputs into its "
     "journal (one transaction per pass), runs the bundled wasm plugins, the scheduler and tract, and "
     "commits every result with its provenance to the SQLite outbox (WAL, `synchronous=FULL`), as "
     "`sluice run` does; timed from the first accept to the last commit; plugins and the execution "
     "choice come from the cache, as on a restarted device. **Peer**: `benches/peer/pipeline.py`, "
     "decode/parse, numpy preprocessing, one onnxruntime call per batch, JSON documents into SQLite "
     "(WAL, `synchronous=FULL`, one transaction per batch); timed from the first input to the last "
     "commit. Peak RSS is each process's high-water mark (`VmHWM` / `ru_maxrss`), start-up included.")
emit("")
emit("| job | items | Sluice items/s | peer items/s | Sluice / peer | Sluice peak RSS | peer peak RSS | Sluice / peer |")
emit("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for job, row in pipeline_rows.items():
    label = f"{job} (ran on {row['engine']})" if "auto" in job else job
    emit(f"| {label} | {row['items']} | {fmt(row['sluice_ips'])} | {fmt(row['peer_ips'])} | **{row['speed']:.2f}x** | "
         f"{fmt(row['sluice_rss'])} MiB | {fmt(row['peer_rss'])} MiB | **{row['rss']:.2f}x** |")
emit("")
if pipeline_rows:
    any_row = next(iter(pipeline_rows.values()))
    emit(f"Medians of {any_row['rounds']} rounds. The peer ran with onnxruntime's intra-op threads = "
         f"{any_row['peer_threads']} (all cores), batches of 32 (MobileNetV2: 8). ")
    d = pipeline_rows.get("digits")
    if d and d["sluice_accuracy"] is not None:
        emit(f"Both sides did the same work: digits accuracy {d['sluice_accuracy']:.4f} (Sluice) and "
             f"{d['peer_accuracy']:.4f} (peer) against the held-out labels.")
    emit("")
    split_rows = [(job, row) for job, row in pipeline_rows.items()
                  if row["rss_at_end"].get("anon_mib") is not None
                  and row["peer_rss_at_end"].get("anon_mib") is not None]
    if split_rows:
        emit("Where the resident memory was at the end of the first round (`RssFile` / `RssAnon` in "
             "`/proc/self/status`): file pages are the mapped executable and libraries, shared with other "
             "processes and reclaimable under pressure; allocated memory is the process's own.")
        emit("")
        emit("| job | Sluice file pages | Sluice allocated | peer file pages | peer allocated | allocated, Sluice / peer |")
        emit("| --- | ---: | ---: | ---: | ---: | ---: |")
        for job, row in split_rows:
            ours_split, peer_split = row["rss_at_end"], row["peer_rss_at_end"]
            emit(f"| {job} | {ours_split['file_mib']:.1f} MiB | {ours_split['anon_mib']:.1f} MiB | "
                 f"{peer_split['file_mib']:.1f} MiB | {peer_split['anon_mib']:.1f} MiB | "
                 f"{ours_split['anon_mib'] / peer_split['anon_mib']:.2f}x |")
        emit("")
    for job, row in pipeline_rows.items():
        chosen = row["chosen"]
        if chosen:
            intra = ", each chunk's operators on every core" if chosen.get("intra_op") else ""
            emit(f"- {job}: Sluice ran batches as chunks of up to {chosen.get('chunk')} item(s) on "
                 f"{chosen.get('threads')} thread(s){intra} (measured at first start).")
    emit("")

# ------------------------------------------------------------------ arrivals
arrival_runs = [(f.split("pipeline-arrival-")[1][:-5], load(f)) for f in
                sorted(os.path.basename(p) for p in glob.glob(os.path.join(OUT, "pipeline-arrival-*.json")))]
if arrival_runs:
    emit("## Arrival patterns")
    emit("")
    emit("The same pipelines on tract fed three ways (`sluice-bench pipeline --arrival`): a burst (everything "
         "accepted at once, as above), a steady stream at half the burst's throughput, at most 200 per second (one input per "
         "transaction, on a clock), and one input at a time (each accepted when the previous result is stored: "
         "a lone input on an idle device). Latency is from acceptance to the committed result (ms, from the "
         "records); a steady stream that the device keeps up with has items/s equal to its rate.")
    emit("")
    emit("| job | arrival | items/s | latency p50 | p99 | time per item / parts' |")
    emit("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in arrival_runs:
        if not r:
            continue
        lat = r.get("lone_latency_us") or {}
        if lat:
            p50, p99 = f"{lat['p50'] / 1000:.1f} ms", f"{lat['p99'] / 1000:.1f} ms"
        else:
            lat = r.get("latency_ms") or {}
            p50, p99 = f"{lat.get('p50', float('nan')):.0f} ms", f"{lat.get('p99', float('nan')):.0f} ms"
        vs = "—" if r["arrival"].startswith("steady") else f"{r.get('vs_parts', float('nan')):.2f}x"
        emit(f"| {r['job']} | {r['arrival']} | {fmt(r['items_per_s'])} | {p50} | {p99} | {vs} |")
    emit("")

# ------------------------------------------------------------------ engine
emit("## Engine: tract vs onnxruntime")
emit("")
emit("The same model files and the same input bytes (written by `benches/peer/engine.py`, read by "
     "`sluice-bench engine`); best of two alternating rounds, ms per batch. tract's \"2 threads\" is "
     "the faster of its intra-op threads (multithreaded matrix products on Sluice's inference pool) "
     "and the batch split in two halves run in parallel: the two ways Sluice's scheduler measures "
     "and chooses from. Max abs diff compares tract's outputs with onnxruntime's for the same input.")
emit("")
peer_engine = {}
for rep in rounds("engine-peer-*.json"):
    for r in rep["results"]:
        key = (r["model"], r["batch"], r["threads"])
        peer_engine[key] = min(peer_engine.get(key, float("inf")), r["ms_per_batch"])
ours_engine = {}
diffs = {}
for rep in rounds("engine-sluice-*.json"):
    for r in rep["engine"]:
        for threads, field in ((1, "tract_ms_per_batch_1_thread"), (2, "tract_ms_per_batch_2_threads")):
            value = r.get(field)
            if value is not None:
                key = (r["model"], r["batch"], threads)
                ours_engine[key] = min(ours_engine.get(key, float("inf")), value)
        diffs[(r["model"], r["batch"])] = r["max_abs_diff_vs_onnxruntime"]
cores = os.cpu_count() or 2
emit("| model | batch | threads | tract ms | onnxruntime ms | tract / ort time | max abs diff |")
emit("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
engine_losses = []
for (model, batch, threads), ort_ms in sorted(peer_engine.items()):
    tract_threads = 2 if threads > 1 else 1
    tract_ms = ours_engine.get((model, batch, tract_threads))
    r = ratio(tract_ms, ort_ms)
    if r is not None and r > 1.1:
        engine_losses.append((model, batch, threads, r))
    emit(f"| {model} | {batch} | {threads} | {fmt(tract_ms, 3)} | {fmt(ort_ms, 3)} | "
         f"{'n/a' if r is None else f'{r:.2f}x'} | {diffs.get((model, batch), float('nan')):.2e} |")
emit("")

# ------------------------------------------------------------------ overheads
emit("## Overheads")
emit("")
boundary = overheads.get("plugin_boundary")
if boundary:
    emit("**Plugin boundary** (digits, 450 items, batches of 32 per wasm call): the bundled wasm "
         "plugins vs the same logic in native Rust in the host, µs per item.")
    emit("")
    emit("| stage | wasm plugin | native | difference |")
    emit("| --- | ---: | ---: | ---: |")
    for stage in ("preprocess", "postprocess"):
        w, n = boundary[f"wasm_{stage}_us_per_item"], boundary[f"native_{stage}_us_per_item"]
        emit(f"| digits {stage} | {w:.1f} | {n:.1f} | {w - n:+.1f} µs ({w / n:.2f}x) |")
    mb = overheads.get("plugin_boundary_mobilenet")
    if mb:
        w, n = mb["wasm_preprocess_us_per_item"], mb["native_preprocess_us_per_item"]
        emit(f"| MobileNetV2 preprocess (JPEG, 224x224) | {w:.0f} | {n:.0f} | {w - n:+.0f} µs ({w / n:.2f}x) |")
    emit("")
    if mb:
        peer_pre = [t.get("preprocess_us_per_item") for t in rounds("pipeline-mobilenet-peer-*.json")]
        peer_pre = [p for p in peer_pre if p is not None]
        emit("The MobileNetV2 preprocessing's native side is the plugin's own method with the same crates "
             "(JPEGs that still cover 224 x 224 at 1/2, 1/4 or 1/8 scale decoded at that scale, "
             "`fast_image_resize`'s bilinear convolution)"
             + (f"; the peer's Pillow path (decode, bilinear resize, numpy normalization) took "
                f"{statistics.median(peer_pre):.0f} µs per item inside its pipeline runs, so the wasm plugin "
                f"takes {w / statistics.median(peer_pre):.2f}x the peer's time." if peer_pre else "."))
        emit("")
if sched:
    emit("**Scheduler vs calling tract directly** on the same batch (stacked, one thread; single runs "
         "of each in alternating pairs, medians; the overhead from the median per-pair ratio): "
         "the scheduler adds queueing, per-item checks, stacking and splitting.")
    emit("")
    emit("| model | batch | raw tract µs/item | via scheduler µs/item | overhead | middle half of the pairs |")
    emit("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in sched.values():
        low, high = row.get("overhead_percent_quartiles", [float("nan")] * 2)
        emit(f"| {row['model']} | {row['batch']} | {fmt(row['raw_tract_us_per_item'])} | "
             f"{fmt(row['scheduler_us_per_item'])} | {row['overhead_us_per_item']:+.1f} µs ({row['overhead_percent']:+.1f}%) | "
             f"{low:+.1f}% to {high:+.1f}% |")
    emit("")
batching = overheads.get("batching", [])
if batching:
    emit("**Batching**: 4 full batches of identical items through the scheduler, µs per item, with "
         "the adaptive choice (measured at load), always one stacked tensor, and always one item at a time.")
    emit("")
    emit("| model | max batch | adaptive (choice) | always stacked | always batch 1 | adaptive vs best fixed |")
    emit("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in batching:
        auto, stacked, single = row["auto_us_per_item"], row["stacked_us_per_item"], row["single_us_per_item"]
        choice = row.get("auto_choice", {})
        emit(f"| {row['model']} | {row['max_batch']} | {fmt(auto)} ({choice.get('chunk')} x {choice.get('threads')} thr) | "
             f"{fmt(stacked)} | {fmt(single)} | {auto / min(stacked, single):.2f}x |")
    emit("")

# ------------------------------------------------------------------ start-up
emit("## Start-up and footprint")
emit("")
if startup:
    emit(f"`sluice infer` on one digit image as a new process, {startup.get('runs')} runs each, alternating: "
         "time from spawn to the first result line, and the process's peak RSS.")
    emit("")
    emit("| case | median | fastest | peak RSS |")
    emit("| --- | ---: | ---: | ---: |")
    for key, label in (("warm_cached", "plugins and execution choice cached (a restart)"),
                       ("cold_compile", "empty cache: compile plugins, measure the model"),
                       ("runtime_only_cached", "runtime-only build (no compiler), cache from the full build")):
        row = startup.get(key)
        if row:
            emit(f"| {label} | {row['median_ms']:.0f} ms | {row['min_ms']:.0f} ms | {row['peak_rss_mib']:.1f} MiB |")
    emit("")
sizes = []
for name, label in (("sluice.stripped", "full (with Cranelift)"), ("sluice-runtime-only.stripped", "runtime-only (no compiler)")):
    path = os.path.join(OUT, name)
    if os.path.exists(path):
        sizes.append((label, os.path.getsize(path)))
if sizes:
    emit("| stripped `sluice` binary | size |")
    emit("| --- | ---: |")
    for label, size in sizes:
        emit(f"| {label} | {size / 2**20:.1f} MiB |")
    if len(sizes) == 2:
        emit(f"| difference | {(sizes[0][1] - sizes[1][1]) / 2**20:.1f} MiB |")
    emit("")
    emit("Both binaries embed the four bundled plugins. The runtime-only build "
         "(`cargo build --release -p sluice --no-default-features --features bundled-plugins`) loads "
         "plugins only from a cache filled by `sluice plugin compile` on a full build.")
    emit("")

# ------------------------------------------------------------------ outbox
if outbox:
    emit("## Outbox and sync")
    emit("")
    emit(f"Records shaped like digits results ({outbox['record_bytes']:.0f} bytes of JSON each), "
         "SQLite WAL with `synchronous=FULL` (every commit is fsynced).")
    emit("")
    emit("| operation | records | records/s |")
    emit("| --- | ---: | ---: |")
    for row in outbox["appends"]:
        emit(f"| durable append, {row['records_per_commit']} per commit | {row['records']} | {fmt(row['records_per_s'])} |")
    for local in (True, False):
        rows = [r for r in outbox.get("completes", []) if r["local_copies"] == local]
        if rows:
            rates = sorted(r["records_per_s"] for r in rows)
            label = "with" if local else "without"
            emit(f"| accept 64 inputs, then complete them (one commit each), {label} local copies, median of {len(rows)} | "
                 f"{rows[0]['records']} | {fmt(rates[len(rates) // 2])} |")
    sync = outbox["sync"]
    emit(f"| upload to a collector on loopback ({sync['batch_max_records']} per batch, zstd) | {sync['records']} | "
         f"{fmt(sync['records_per_s'])} ({sync['mib_per_s']:.1f} MiB/s of JSON) |")
    emit("")
    emit(f"zstd shrinks a batch of such records {sync['zstd_ratio']:.0f}x (they repeat ids, digests and "
         "keys; real results compress less). Uploads include the collector's own durable commit.")
    emit("")

# ------------------------------------------------------------------ losses
emit("## Where Sluice loses, and why")
emit("")
losses = []
for job, row in pipeline_rows.items():
    if row["speed"] < 1:
        why = {
            "mobilenet": "the pipeline's time is almost all inference, and tract's convolutions are slower "
                         "than onnxruntime's (see the engine table); Sluice runs single items on both cores, "
                         "onnxruntime runs each batch with two intra-op threads and its own conv kernels",
        }.get(job, "see the overheads above")
        losses.append(f"- **{job} throughput**: {row['speed']:.2f}x the peer: {why}.")
    if row["rss"] > 0.25:
        split = row["rss_at_end"]
        where = ""
        if split.get("file_mib") is not None:
            where = (f" At the end of the run {split['file_mib']:.0f} MiB of the resident memory were file pages "
                     f"(the {sizes[0][1] / 2**20 if sizes else 0:.0f} MiB executable: wasmtime with Cranelift, tract's "
                     "kernels, SQLite, the HTTP stack, paged in as it runs; shared and reclaimable) and "
                     f"{split['anon_mib']:.0f} MiB allocated (plugin instances, the model and its plans, "
                     "SQLite's page cache, buffers).")
            peer_split = row["peer_rss_at_end"]
            if peer_split.get("anon_mib") is not None:
                where += (f" The peer had {peer_split['file_mib']:.0f} MiB of file pages (Python, numpy, "
                          f"onnxruntime, Pillow) and {peer_split['anon_mib']:.0f} MiB allocated: Sluice's "
                          f"allocated memory is {split['anon_mib'] / peer_split['anon_mib']:.2f}x the peer's"
                          + (", so the executable's pages are what keep it above the target."
                             if split['anon_mib'] <= 0.25 * peer_split['anon_mib'] else "."))
        losses.append(
            f"- **{job} peak RSS**: {fmt(row['sluice_rss'])} MiB, {row['rss']:.2f}x the peer's "
            f"{fmt(row['peer_rss'])} MiB (target: 0.25x).{where}"
            + (" tract's plans keep each intermediate activation of a run until the run ends, where "
               "onnxruntime plans and reuses one arena." if job == "mobilenet" else "")
            + (" On onnxruntime, Sluice runs one session per chunk lane running at once plus one whose "
               "operators use every core (for a lone input), where the peer has one: each session keeps "
               "its own copy of the model's initializers and its own buffers (the packed weights are "
               "shared, and no session keeps an arena)." if "auto" in job and row["engine"] == "onnxruntime" else ""))
for model, batch, threads, r in engine_losses:
    one = ours_engine.get((model, batch, 1))
    if threads > 1 and one is not None and one < ours_engine.get((model, batch, 2), 0):
        why = (f": splitting so small a batch over two threads costs more (thread start-up per call) than it "
               f"saves; on one thread tract takes {one:.3f} ms. Sluice's scheduler measures this and runs such "
               "models on one thread (see Batching)")
    elif model in ("mobilenetv2", "text-direction"):
        why = (": onnxruntime's convolution kernels (MLAS, with fused activations and direct depthwise "
               "convolutions) are faster than tract's on this CPU"
               + (", and tract also loses per item as the batch grows" if batch > 1 else "")
               + (", and onnxruntime's intra-op threads gain more on two cores than tract's (multithreaded "
                  "matrix products only)" if threads > 1 else ""))
    else:
        why = ""
    losses.append(f"- **engine, {model} at batch {batch}, {threads} thread(s)**: tract takes {r:.2f}x "
                  f"onnxruntime's time{why}.")
for job, row in pipeline_rows.items():
    if "auto" in job and row["speed"] < 1.2:
        losses.append(
            f"- **{job} throughput**: {row['speed']:.2f}x the peer (target 1.2x), on {row['engine']}. Both sides run "
            "the same onnxruntime kernels, so what is left is the rest of the pipeline: Sluice's wasm "
            "preprocessing takes about as long as the peer's Pillow path (see the plugin boundary), and the two "
            "cores are shared between decoding images and inference, which Sluice overlaps and the peer runs "
            "one after the other: overlapping can at best hide the decoding's share of the time (see the "
            "engine table and the plugin boundary for the two costs).")
image = overheads.get("plugin_boundary_mobilenet")
if image and image["wasm_preprocess_us_per_item"] > 1.3 * image["native_preprocess_us_per_item"]:
    w, n = image["wasm_preprocess_us_per_item"], image["native_preprocess_us_per_item"]
    losses.append(f"- **JPEG preprocessing in wasm**: {w / n:.2f}x the same code native (target 1.3x). The "
                  "resizing uses wasm simd128 (`fast_image_resize`), but the full-size JPEG decoder "
                  "(zune-jpeg, through `image`) has AVX2 and NEON kernels for the IDCT and colour conversion and "
                  "only scalar code for wasm; jpeg-decoder, used for DCT-scaled decoding, has a simd128 IDCT. "
                  "The rest (Huffman decoding, upsampling) is scalar everywhere and pays wasm's bounds checks.")
if boundary and boundary["wasm_preprocess_us_per_item"] > boundary["native_preprocess_us_per_item"]:
    w, n = boundary["wasm_preprocess_us_per_item"], boundary["native_preprocess_us_per_item"]
    losses.append(f"- **plugin boundary**: digits preprocessing costs {w - n:.1f} µs more per item in wasm "
                  f"than natively ({w / n:.2f}x): copying each input into the sandbox and each tensor out, "
                  "and wasm code being slower than native (bounds checks, 128-bit SIMD only). This is the "
                  "price of running third-party code isolated.")
cold = (startup.get("cold_compile") or {}).get("median_ms")
if cold is not None:
    losses.append(f"- **first start on a device**: {cold:.0f} ms with an empty cache (compiling the plugins with "
                  "Cranelift and measuring the model), once; restarts use the cache.")
emit("\n".join(losses) if losses else "Nowhere in this run.")
emit("")

# ------------------------------------------------------------------ watching
observe = load("observe.json")
if observe:
    u, ab = observe["per_item_us"], observe["pipeline_ab"]
    emit("## Watching: metrics and drift")
    emit("")
    emit(f"What the agent adds per item to watch a pipeline (`sluice-bench observe`, digits, "
         f"{observe['features']} drift features of which {observe['scored_features']} scored; budget: 2 µs "
         "per item for both together).")
    emit("")
    emit("| part | µs per item |")
    emit("| --- | ---: |")
    emit(f"| metrics (item outcome, four stage histograms) | {u['metrics']:.2f} |")
    emit(f"| drift: copy of the model's inputs | {u['copy_inputs']:.2f} |")
    emit(f"| drift: binning every feature into the window | {u['drift_observe']:.2f} |")
    emit(f"| **metrics and drift** | **{u['drift_and_metrics']:.2f}** |")
    emit("")
    emit(f"Closing a window (scoring every feature) takes {observe['window_close_us']:.1f} µs, once per "
         "`drift.window_items` items. The digits pipeline, one batch of 32 at a time, with and without "
         f"the drift observer, alternating: {ab['without_drift_us_per_item']:.1f} and "
         f"{ab['with_drift_us_per_item']:.1f} µs per item, median ratio {ab['ratio_median']:.3f} "
         f"(quartiles {ab['ratio_quartiles'][0]:.3f}-{ab['ratio_quartiles'][1]:.3f}).")
    emit("")

# ------------------------------------------------------------------ fleet
# The upstream load test runs on its own (benches/fleet.sh): its section is
# rendered from its results when they are here, else kept as it was.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import devices_report  # noqa: E402
import fleet_report  # noqa: E402
import live_report  # noqa: E402
import sections  # noqa: E402

for name, module in (("live", live_report), ("devices", devices_report), ("fleet", fleet_report)):
    kept = module.section(os.path.join(OUT, f"{name}.json")) or sections.kept(os.path.join(ROOT, "BENCHMARKS.md"), name)
    if kept:
        emit(kept)
        emit("")

sys.stdout.write("\n".join(lines) + "\n")
