#!/usr/bin/env python3
"""onnxruntime engine benchmark: the "peer" side of Sluice's engine comparison.

For every model given on the command line, for each batch size (default 1 and
8) and each intra-op thread count (default 1 and 2), time `session.run` on
deterministic random inputs and report the mean time per batch and per item.
It also writes the exact inputs and onnxruntime's outputs as raw little-endian
float32 files plus an `index.json`, so that `sluice-bench engine --peer-dir DIR`
can run tract on the same bytes and report the max abs difference.

Usage:
    engine.py [options] SPEC [SPEC ...]

    SPEC = NAME=PATH[:INPUT=SHAPE]
        NAME   a short name for the report and the file names (e.g. digits)
        PATH   the ONNX file (relative paths are relative to the current dir)
        INPUT=SHAPE  optional: the input's shape, dims separated by `x`, with
               `N` for the batch dimension, e.g. `x=Nx3x48x192`. Needed when the
               model declares open dims other than the batch (dim 0). Without
               it, the model's declared shape is used with dim 0 = batch.

    Only single-input models are supported; the first output is saved.

Example (from the repository root):
    python benches/peer/engine.py --data-dir /tmp/peer-engine --out /tmp/peer-engine.json \
        digits=models/digits/digits_mlp.onnx \
        anomaly=models/anomaly/autoencoder.onnx \
        text-direction=models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx:x=Nx3x48x192 \
        mobilenetv2=target/mobilenetv2.onnx

Inputs: numpy `default_rng(0).random(shape, dtype=float32)` (uniform [0, 1)),
one array per (model, batch), the same for every thread count.
Session: intra_op_num_threads = 1 or 2, inter_op_num_threads = 1, sequential
execution, graph optimization level ALL, CPUExecutionProvider, everything else
onnxruntime's defaults. Timing: 3 warm-up runs, then runs until both the time
budget (default 1.5 s) and the minimum run count (default 5) are reached.

Expects the venv made by models/build.sh (${TMPDIR:-/tmp}/sluice-models-venv)
or any Python 3.11 with the packages pinned in benches/peer/requirements.txt.
Does not set or unset any OPENBLAS_* or *_NUM_THREADS variable.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_spec(spec):
    """NAME=PATH[:INPUT=SHAPE] -> (name, path, {input: [dims or 'N']})."""
    if "=" not in spec:
        raise SystemExit(f"bad model spec `{spec}`: expected NAME=PATH[:INPUT=SHAPE]")
    name, rest = spec.split("=", 1)
    shapes = {}
    path = rest
    # The override is after the last ':' whose tail contains '='.
    head, sep, tail = rest.rpartition(":")
    if sep and "=" in tail:
        path = head
        for part in tail.split(","):
            inp, _, shape = part.partition("=")
            dims = []
            for d in shape.split("x"):
                d = d.strip()
                if d in ("N", "n"):
                    dims.append("N")
                elif d.isdigit() and int(d) > 0:
                    dims.append(int(d))
                else:
                    raise SystemExit(f"bad shape `{shape}` in `{spec}`: dims are positive integers or N, separated by x")
            shapes[inp.strip()] = dims
    if not name or not path:
        raise SystemExit(f"bad model spec `{spec}`")
    return name, path, shapes


def session_options(threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def make_session(path, threads):
    return ort.InferenceSession(path, sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def input_shape(name, model_input, override, batch):
    if model_input.name in override:
        dims = override[model_input.name]
    else:
        dims = ["N"] + list(model_input.shape[1:])
    shape = []
    for i, d in enumerate(dims):
        if i == 0 or d == "N":
            shape.append(batch)
        elif isinstance(d, int) and d > 0:
            shape.append(d)
        else:
            raise SystemExit(
                f"{name}: input `{model_input.name}` has an open dim {i} ({d!r}); "
                f"give its shape, e.g. {name}=PATH:{model_input.name}=Nx3x48x192"
            )
    return shape


def time_runs(sess, feed, budget, min_runs, warmup):
    for _ in range(warmup):
        sess.run(None, feed)
    runs = 0
    start = time.perf_counter()
    while True:
        sess.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - start
        if runs >= min_runs and elapsed >= budget:
            return runs, elapsed


def repo_relative(path):
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute, REPO_ROOT)
    return absolute if rel.startswith("..") else rel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", metavar="SPEC", help="NAME=PATH[:INPUT=SHAPE]")
    ap.add_argument("--out", help="write the JSON report here (default: stdout)")
    ap.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "sluice-peer-engine"),
                    help="where index.json and the inputs_/outputs_ .bin files go (default: %(default)s)")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default: %(default)s)")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timed runs per case (default: %(default)s)")
    ap.add_argument("--min-runs", type=int, default=5, help="at least this many timed runs (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: %(default)s)")
    args = ap.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    models = [parse_spec(s) for s in args.specs]
    os.makedirs(args.data_dir, exist_ok=True)

    results, cases = [], []
    for name, path, override in models:
        if not os.path.isfile(path):
            raise SystemExit(f"{name}: no such model file: {path}")
        sessions = {t: make_session(path, t) for t in threads_list}
        first = sessions[threads_list[0]]
        if len(first.get_inputs()) != 1:
            raise SystemExit(f"{name}: {len(first.get_inputs())} inputs; only single-input models are supported")
        model_input = first.get_inputs()[0]
        if model_input.type != "tensor(float)":
            raise SystemExit(f"{name}: input `{model_input.name}` is {model_input.type}, not float32")
        unknown = set(override) - {model_input.name}
        if unknown:
            raise SystemExit(f"{name}: no input named {sorted(unknown)} (the input is `{model_input.name}`)")
        output_name = first.get_outputs()[0].name
        for batch in batches:
            shape = input_shape(name, model_input, override, batch)
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            feed = {model_input.name: x}
            reference = None
            for t in threads_list:
                sess = sessions[t]
                out = np.ascontiguousarray(sess.run([output_name], feed)[0], dtype=np.float32)
                if reference is None:
                    reference = out
                    inputs_file = f"inputs_{name}_b{batch}.bin"
                    outputs_file = f"outputs_{name}_b{batch}.bin"
                    x.astype("<f4").tofile(os.path.join(args.data_dir, inputs_file))
                    out.astype("<f4").tofile(os.path.join(args.data_dir, outputs_file))
                    cases.append({
                        "model": name, "path": repo_relative(path), "batch": batch,
                        "input_name": model_input.name, "input_shape": shape,
                        "output_name": output_name, "output_shape": list(out.shape),
                        "inputs_file": inputs_file, "outputs_file": outputs_file,
                        "threads": t,
                    })
                    diff = 0.0
                else:
                    diff = float(np.max(np.abs(out - reference))) if out.size else 0.0
                runs, elapsed = time_runs(sess, feed, args.budget, args.min_runs, args.warmup)
                ms = elapsed / runs * 1e3
                row = {"model": name, "batch": batch, "threads": t, "runs": runs,
                       "ms_per_batch": round(ms, 6), "us_per_item": round(ms * 1e3 / batch, 3),
                       "max_abs_diff_vs_first_threads": diff}
                results.append(row)
                print(f"{name} b{batch} t{t}: {runs} runs, {ms:.4f} ms/batch, {ms * 1e3 / batch:.2f} us/item",
                      file=sys.stderr)
        del sessions

    with open(os.path.join(args.data_dir, "index.json"), "w") as f:
        json.dump({"onnxruntime": ort.__version__, "cases": cases}, f, indent=2)
        f.write("\n")

    report = {
        "peer": "python+onnxruntime",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "settings": {
            "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"],
            "warmup_runs": args.warmup, "budget_s": args.budget, "min_runs": args.min_runs,
            "inputs": "numpy default_rng(0).random(shape, float32), uniform [0, 1)",
        },
        "data_dir": os.path.abspath(args.data_dir),
        "results": results,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
