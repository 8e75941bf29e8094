#!/usr/bin/env python3
"""The same jobs as Sluice's pipelines, as a plain Python + onnxruntime program.

This is the "peer" of `sluice-bench pipeline --job JOB`: what a gateway
developer would write without Sluice. Per batch: decode/parse each input,
preprocess with numpy, one onnxruntime call, postprocess each item to a JSON
document, and write the batch's documents to a SQLite outbox in one
transaction (WAL, synchronous=FULL, so every commit is fsynced).

Jobs:
  digits     models/digits/heldout/*.png (450 8x8 grayscale PNGs), Pillow decode,
             float32 /240 (flat 64), batches of 32, digits_mlp.onnx (softmax
             probabilities), top-3 with labels.txt ->
             {"label", "index", "score", "top": [{"label", "index", "score"} x3]}.
             Accuracy vs heldout/labels.csv; must equal expected.json's 0.975556.
  anomaly    models/anomaly/heldout.csv (171 rows, csv module), (x - mean) / scale
             from scaler.json in float32, batches of 32, autoencoder.onnx (score),
             threshold from expected.json ->
             {"score", "threshold", "label": "anomaly"|"normal", "alert"}.
             Accuracy (alert vs label) must equal expected.json's 0.894737.
  mobilenet  --images synthetic RGB JPEGs (default 32, seeded, 320x240 and
             640x480), written once to a temp dir (or --images-dir) before timing; Pillow decode,
             bilinear resize to 224x224, /255, ImageNet mean/std, NCHW, batches
             of 8, the MobileNetV2 from models/mobilenetv2/make_mobilenetv2.py
             (--model, required), argmax -> {"label", "index", "score"}
             (score = softmax of the logits). Random weights: no accuracy.

Timed: from the first input to the last commit, all --repeat passes over the
input set. Not timed: loading the session, creating the outbox, reading the
input files' bytes into memory (as `sluice-bench pipeline` hands its items in
memory too; decoding/parsing them is timed).

Outbox: table results(id TEXT PRIMARY KEY, pipeline TEXT, payload BLOB,
created_at INTEGER (Unix ms)). --outbox PATH must not exist yet; by default a
fresh file in a temp dir, removed afterwards.

Report (one JSON document, stdout or --out): job, items, seconds, items_per_s,
peak_rss_mib (getrusage ru_maxrss / 1024; Linux reports KiB), rss_at_end
(file-backed and anonymous resident MiB after the run), accuracy, versions,
and the settings used.

Expects the venv made by models/build.sh (${TMPDIR:-/tmp}/sluice-models-venv)
or any Python 3.11 with the packages pinned in benches/peer/requirements.txt.
Does not set or unset any OPENBLAS_* or *_NUM_THREADS variable.
"""
import argparse
import csv
import io
import json
import os
import platform
import resource
import shutil
import sqlite3
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(REPO_ROOT, "models")
DEVICE = "peer"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_json(*parts):
    with open(os.path.join(MODELS, *parts)) as f:
        return json.load(f)


def make_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def open_outbox(path):
    if os.path.exists(path):
        raise SystemExit(f"outbox {path} already exists; give a new path")
    conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SystemExit(f"outbox {path}: could not enable WAL (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE results(id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, "
                 "payload BLOB NOT NULL, created_at INTEGER NOT NULL)")
    return conn


def batched(iterable, n):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Time spent in `preprocess` (decode, resize, normalize), for the report.
PREPROCESS_SECONDS = 0.0


def run_pipeline(conn, job, items, batch_size, preprocess, session, postprocess):
    """items: iterable of (id, raw, truth). preprocess(list of raw) -> batch array;
    postprocess(output row) -> (document, prediction). Returns [(prediction, truth)]."""
    input_name = session.get_inputs()[0].name
    judged = []
    global PREPROCESS_SECONDS
    for chunk in batched(items, batch_size):
        started = time.perf_counter()
        x = preprocess([raw for _, raw, _ in chunk])
        PREPROCESS_SECONDS += time.perf_counter() - started
        y = session.run(None, {input_name: x})[0]
        now = int(time.time() * 1000)
        rows = []
        for (item_id, _, truth), out in zip(chunk, y):
            doc, prediction = postprocess(out)
            rows.append((item_id, job, json.dumps(doc).encode(), now))
            judged.append((prediction, truth))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO results(id, pipeline, payload, created_at) VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    return judged


# ---------------------------------------------------------------- digits

def digits_job(args):
    heldout = os.path.join(MODELS, "digits", "heldout")
    with open(os.path.join(heldout, "labels.csv"), newline="") as f:
        truth = {row["file"]: row["label"] for row in csv.DictReader(f)}
    with open(os.path.join(MODELS, "digits", "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    files = sorted(n for n in os.listdir(heldout) if n.endswith(".png"))
    if sorted(truth) != files:
        raise SystemExit("digits: heldout/*.png and labels.csv disagree")
    data = {}
    for name in files:
        with open(os.path.join(heldout, name), "rb") as f:
            data[name] = f.read()
    expected = load_json("digits", "expected.json")["onnx_accuracy"]

    def items():
        for rep in range(args.repeat):
            for name in files:
                yield f"{DEVICE}:digits:{rep}:{name}", data[name], truth[name]

    def preprocess(raws):
        x = np.empty((len(raws), 64), dtype=np.float32)
        for i, raw in enumerate(raws):
            img = Image.open(io.BytesIO(raw)).convert("L")
            x[i] = np.asarray(img, dtype=np.float32).reshape(64) / np.float32(240)
        return x

    def postprocess(probs):
        order = np.argsort(-probs, kind="stable")[:3]
        top = [{"label": labels[i], "index": int(i), "score": float(probs[i])} for i in order]
        return {"label": top[0]["label"], "index": top[0]["index"], "score": top[0]["score"], "top": top}, top[0]["label"]

    model = os.path.join(MODELS, "digits", "digits_mlp.onnx")
    return model, items, preprocess, postprocess, expected, len(files)


# ---------------------------------------------------------------- anomaly

def anomaly_job(args):
    with open(os.path.join(MODELS, "anomaly", "heldout.csv"), newline="") as f:
        text = f.read()
    scaler = load_json("anomaly", "scaler.json")
    exp = load_json("anomaly", "expected.json")
    threshold, expected = exp["threshold"], exp["accuracy"]
    mean = np.array(scaler["mean"], dtype=np.float32)
    scale = np.array(scaler["scale"], dtype=np.float32)
    features = scaler["features"]
    n_rows = sum(1 for _ in csv.reader(io.StringIO(text))) - 1

    def items():
        for rep in range(args.repeat):
            reader = csv.reader(io.StringIO(text))
            header = next(reader)
            if header[:-1] != features or header[-1] != "label":
                raise SystemExit("anomaly: heldout.csv columns differ from scaler.json features + label")
            for i, row in enumerate(reader):
                yield f"{DEVICE}:anomaly:{rep}:row-{i}", [float(v) for v in row[:-1]], row[-1] == "anomaly"

    def preprocess(raws):
        return (np.array(raws, dtype=np.float32) - mean) / scale

    def postprocess(out):
        score = float(out[0])
        alert = score > threshold
        return {"score": score, "threshold": threshold, "label": "anomaly" if alert else "normal", "alert": alert}, alert

    model = os.path.join(MODELS, "anomaly", "autoencoder.onnx")
    return model, items, preprocess, postprocess, expected, n_rows


# ---------------------------------------------------------------- mobilenet

def synthetic_jpegs(directory, count, seed=0):
    """Seeded smooth-ish RGB images (colour blobs + noise), JPEG quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = (320, 240) if i % 2 == 0 else (640, 480)
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
        path = os.path.join(directory, f"img{i:04d}.jpg")
        Image.fromarray(img, "RGB").save(path, quality=90)
        paths.append(path)
    return paths


def jpeg_items(args, tmp, job):
    """The synthetic JPEGs by name, and the job's items over them. With
    --images-dir the images are written there (the same seeded bytes every
    time) so that `sluice-bench pipeline` reads them too."""
    directory = args.images_dir or tmp
    os.makedirs(directory, exist_ok=True)
    data = {}
    for path in synthetic_jpegs(directory, args.images):
        with open(path, "rb") as f:
            data[os.path.basename(path)] = f.read()

    def items():
        for rep in range(args.repeat):
            for name, raw in data.items():
                yield f"{DEVICE}:{job}:{rep}:{name}", raw, None

    return data, items


def mobilenet_job(args, tmp):
    if not args.model:
        raise SystemExit("--job mobilenet needs --model PATH (make it with models/mobilenetv2/make_mobilenetv2.py PATH)")
    data, items = jpeg_items(args, tmp, "mobilenet")

    def preprocess(raws):
        x = np.empty((len(raws), 3, 224, 224), dtype=np.float32)
        for i, raw in enumerate(raws):
            img = Image.open(io.BytesIO(raw)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            a = (np.asarray(img, dtype=np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD
            x[i] = a.transpose(2, 0, 1)
        return x

    def postprocess(logits):
        i = int(np.argmax(logits))
        e = np.exp(logits - logits[i])
        return {"label": str(i), "index": i, "score": float(e[i] / e.sum())}, None

    return args.model, items, preprocess, postprocess, None, len(data)


def text_direction_job(args, tmp):
    """PP-OCR's text direction classifier on the same synthetic JPEGs, resized
    to 192 x 48 (its input), (x/255 - 0.5) / 0.5, NCHW; it outputs softmax
    probabilities for 0 and 180 degrees."""
    data, items = jpeg_items(args, tmp, "text-direction")

    def preprocess(raws):
        x = np.empty((len(raws), 3, 48, 192), dtype=np.float32)
        for i, raw in enumerate(raws):
            img = Image.open(io.BytesIO(raw)).convert("RGB").resize((192, 48), Image.Resampling.BILINEAR)
            a = (np.asarray(img, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
            x[i] = a.transpose(2, 0, 1)
        return x

    def postprocess(probabilities):
        i = int(np.argmax(probabilities))
        return {"label": ["0", "180"][i], "index": i, "score": float(probabilities[i])}, None

    model = os.path.join(MODELS, "text-direction", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    return model, items, preprocess, postprocess, None, len(data)


# ---------------------------------------------------------------- main


def rss_split_mib():
    """Resident memory now, as `sluice-bench` reports it: file-backed pages
    (the interpreter and libraries, shared and reclaimable) and anonymous ones
    (what the process allocated), in MiB, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("RssFile", "RssAnon"):
                fields[name] = int(value.split()[0]) / 1024
    return {"file_mib": fields.get("RssFile"), "anon_mib": fields.get("RssAnon")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", required=True, choices=["digits", "anomaly", "mobilenet", "text-direction"])
    ap.add_argument("--repeat", type=int, default=1, help="process the input set this many times (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: %(default)s)")
    ap.add_argument("--batch", type=int, help="batch size (default: 32 for digits/anomaly, 8 for mobilenet)")
    ap.add_argument("--outbox", help="SQLite outbox to create (must not exist; default: a temp file, removed)")
    ap.add_argument("--model", help="mobilenet only: the MobileNetV2 ONNX file")
    ap.add_argument("--images", type=int, default=32, help="mobilenet only: synthetic images (default: %(default)s)")
    ap.add_argument("--images-dir", help="mobilenet only: write the synthetic images here and keep them (default: a temp dir)")
    ap.add_argument("--out", help="write the JSON report here (default: stdout)")
    args = ap.parse_args()
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    batch_size = args.batch or (8 if args.job in ("mobilenet", "text-direction") else 32)

    tmp = tempfile.mkdtemp(prefix="sluice-peer-")
    try:
        if args.job == "digits":
            job = digits_job(args)
        elif args.job == "anomaly":
            job = anomaly_job(args)
        elif args.job == "text-direction":
            job = text_direction_job(args, tmp)
        else:
            job = mobilenet_job(args, tmp)
        model, items, preprocess, postprocess, expected, per_pass = job
        session = make_session(model, args.threads)
        outbox = args.outbox or os.path.join(tmp, "outbox.sqlite")
        conn = open_outbox(outbox)

        start = time.perf_counter()
        judged = run_pipeline(conn, args.job, items(), batch_size, preprocess, session, postprocess)
        seconds = time.perf_counter() - start

        n = len(judged)
        stored = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        conn.close()
        if n != per_pass * args.repeat or stored != n:
            raise SystemExit(f"{args.job}: processed {n}, stored {stored}, expected {per_pass * args.repeat}")
        accuracy = None
        if expected is not None:
            accuracy = sum(p == t for p, t in judged) / n
            if abs(accuracy - expected) >= 5e-7:
                raise SystemExit(f"{args.job}: accuracy {accuracy:.6f} != the model's {expected}; this peer is broken")
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_at_end = rss_split_mib()
        report = {
            "peer": "python+onnxruntime",
            "job": args.job,
            "items": n,
            "seconds": round(seconds, 6),
            "items_per_s": round(n / seconds, 3),
            "preprocess_us_per_item": round(PREPROCESS_SECONDS * 1e6 / n, 1),
            "peak_rss_mib": round(peak_rss_mib, 1),
            "rss_at_end": rss_at_end,
            "accuracy": None if accuracy is None else round(accuracy, 6),
            "repeat": args.repeat,
            "batch_size": batch_size,
            "threads": args.threads,
            "model": os.path.relpath(os.path.abspath(model), REPO_ROOT) if os.path.abspath(model).startswith(REPO_ROOT + os.sep) else os.path.abspath(model),
            "outbox": "sqlite3 WAL synchronous=FULL, one transaction per batch" + ("" if args.outbox else " (temp file)"),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
