#!/usr/bin/env python3
"""Build Sluice's small real ONNX models and their held-out data.

Run through `bash models/build.sh`, which pins every package version.
Usage: make_models.py --rapidocr-wheel PATH

Writes, under the directory holding this script:
  digits/        MLP digit classifier (sklearn load_digits), held-out PNGs
  anomaly/       breast-cancer autoencoder anomaly scorer, held-out CSV
  text-direction/ PaddleOCR text-direction classifier copied from rapidocr
Everything is seeded; a second run writes the same bytes on the same machine.
"""
import argparse
import collections
import csv
import hashlib
import json
import os
import shutil
import warnings
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    accuracy_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13
IR_VERSION = 8  # oldest IR that carries opset 13 comfortably; keeps tract happy

RAPIDOCR_CLS_MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
RAPIDOCR_CLS_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"

written = []


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record(path):
    written.append(path)
    return path


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    record(path)


def ops_of(model):
    return sorted(collections.Counter(n.op_type for n in model.graph.node).items())


def save_model(model, path):
    model.ir_version = IR_VERSION
    model.producer_name = "sluice-models/make_models.py"
    onnx.checker.check_model(model, full_check=True)
    for imp in model.opset_import:
        assert imp.domain in ("", "ai.onnx"), f"non-default domain {imp.domain}"
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    record(path)


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def dense_stack(prefix, x_name, coefs, intercepts, hidden_op, out_name):
    """Gemm chain: hidden layers use hidden_op, the last one is linear."""
    nodes, inits = [], []
    cur = x_name
    n = len(coefs)
    for i, (w, b) in enumerate(zip(coefs, intercepts)):
        wn, bn = f"{prefix}_W{i}", f"{prefix}_b{i}"
        inits.append(numpy_helper.from_array(np.asarray(w, np.float32), wn))
        inits.append(numpy_helper.from_array(np.asarray(b, np.float32), bn))
        last = i == n - 1
        lin = out_name if last else f"{prefix}_z{i}"
        nodes.append(helper.make_node("Gemm", [cur, wn, bn], [lin], name=f"{prefix}_gemm{i}"))
        if not last:
            act = f"{prefix}_a{i}"
            nodes.append(helper.make_node(hidden_op, [lin], [act], name=f"{prefix}_{hidden_op.lower()}{i}"))
            cur = act
    return nodes, inits


# --------------------------------------------------------------------------- digits
def build_digits():
    out = os.path.join(HERE, "digits")
    held = os.path.join(out, "heldout")
    if os.path.isdir(held):
        shutil.rmtree(held)
    os.makedirs(held)

    d = load_digits()
    X, y = d.data, d.target  # X integer-valued 0..16
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    Ftr, Fte = Xtr / 16.0, Xte / 16.0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0).fit(Ftr, ytr)
    sk_pred = clf.predict(Fte)
    sk_acc = float(accuracy_score(yte, sk_pred))

    # What skl2onnx itself would emit (for the record; we do not ship it).
    from skl2onnx import to_onnx

    sk_onnx = to_onnx(clf, Ftr[:1].astype(np.float32), options={id(clf): {"zipmap": False}},
                      target_opset=OPSET)
    skl_ops = ops_of(sk_onnx)
    skl_domains = sorted({n.domain or "ai.onnx" for n in sk_onnx.graph.node})
    print(f"digits: skl2onnx graph ops={skl_ops} domains={skl_domains}")

    # Hand-built graph: default domain, single float output.
    nodes, inits = dense_stack("mlp", "input", clf.coefs_, clf.intercepts_, "Relu", "logits")
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.doc_string = "sklearn MLPClassifier(128,64) on load_digits; input = pixels/16 (0..1); output softmax"
    path = os.path.join(out, "digits_mlp.onnx")
    save_model(model, path)
    print(f"digits: shipped graph ops={ops_of(model)}")

    # Cross-check against skl2onnx's own conversion and sklearn on the float features.
    sess = ort_session(path)
    p_hand = sess.run(None, {"input": Fte.astype(np.float32)})[0]
    p_skl = ort_session_bytes(sk_onnx).run(["probabilities"], {"X": Fte.astype(np.float32)})[0]
    assert np.allclose(p_hand, p_skl, atol=1e-5), "hand graph disagrees with skl2onnx"
    assert (p_hand.argmax(1) == sk_pred).all(), "onnxruntime argmax != sklearn predict"

    # Held-out PNGs: value = v*15 (0..240); a preprocessor divides by 240.
    rows = []
    for i, (v, label) in enumerate(zip(Xte, yte)):
        name = f"{i:04d}.png"
        img = Image.fromarray((v.reshape(8, 8) * 15).astype(np.uint8), mode="L")
        img.save(os.path.join(held, name), optimize=False)
        rows.append((name, int(label)))
    with open(os.path.join(held, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        w.writerows(rows)
    record(os.path.join(held, "labels.csv"))

    # Read them back exactly as the host would and score with onnxruntime.
    feats = np.stack([
        np.asarray(Image.open(os.path.join(held, n)).convert("L"), np.float32).reshape(64) / np.float32(240.0)
        for n, _ in rows
    ])
    assert np.array_equal(feats, Fte.astype(np.float32)), "PNG round trip is not exact"
    labels = np.array([l for _, l in rows])
    ort_pred = sess.run(None, {"input": feats})[0].argmax(1)
    ort_acc = float((ort_pred == labels).mean())
    write_json(os.path.join(out, "expected.json"), {
        "model": "digits_mlp.onnx",
        "input": {"name": "input", "shape": ["N", 64], "dtype": "float32",
                  "preprocess": "8x8 grayscale PNG, value/240 (row-major)"},
        "output": {"name": "probabilities", "shape": ["N", 10], "dtype": "float32"},
        "samples": len(rows),
        "correct": int((ort_pred == labels).sum()),
        "onnx_accuracy": round(ort_acc, 6),
        "sklearn_accuracy": round(sk_acc, 6),
        "split": "load_digits, stratified 75/25, random_state=0 (test part)",
    })
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in range(10)))
    record(os.path.join(out, "labels.txt"))
    print(f"digits: n={len(rows)} onnx_acc={ort_acc:.4f} sklearn_acc={sk_acc:.4f}")


def ort_session_bytes(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- anomaly
def build_anomaly():
    out = os.path.join(HERE, "anomaly")
    os.makedirs(out, exist_ok=True)

    d = load_breast_cancer()
    X, y = d.data, d.target  # target 1 = benign, 0 = malignant
    names = [str(n) for n in d.feature_names]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    benign = Xtr[ytr == 1]
    sc = StandardScaler().fit(benign)
    Zb = sc.transform(benign)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ae = MLPRegressor(hidden_layer_sizes=(16, 8, 16), activation="tanh", random_state=0,
                          max_iter=3000).fit(Zb, Zb)

    write_json(os.path.join(out, "scaler.json"), {
        "features": names,
        "mean": [float(v) for v in sc.mean_],
        "scale": [float(v) for v in sc.scale_],
    })

    nodes, inits = dense_stack("ae", "input", ae.coefs_, ae.intercepts_, "Tanh", "recon")
    nodes += [
        helper.make_node("Sub", ["input", "recon"], ["diff"], name="sub"),
        helper.make_node("Mul", ["diff", "diff"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=1, name="mse"),
    ]
    graph = helper.make_graph(
        nodes, "anomaly_autoencoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.doc_string = ("sklearn MLPRegressor autoencoder 30-16-8-16-30 (tanh) on benign breast-cancer rows; "
                        "input standardized with scaler.json; output mean squared reconstruction error")
    path = os.path.join(out, "autoencoder.onnx")
    save_model(model, path)
    print(f"anomaly: graph ops={ops_of(model)}")
    sess = ort_session(path)

    mean32 = np.asarray(sc.mean_, np.float32)
    scale32 = np.asarray(sc.scale_, np.float32)

    def score(raw):
        z = (np.asarray(raw, np.float32) - mean32) / scale32
        return sess.run(None, {"input": z})[0][:, 0]

    # Sanity: graph matches sklearn's own reconstruction error.
    ref = ((ae.predict(Zb) - Zb) ** 2).mean(1)
    assert np.allclose(score(benign), ref, rtol=1e-3, atol=1e-4)

    threshold = float(np.percentile(score(benign), 95))

    label_of = {0: "anomaly", 1: "normal"}
    csv_path = os.path.join(out, "heldout.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(names + ["label"])
        for row, t in zip(Xte, yte):
            w.writerow([repr(float(v)) for v in row] + [label_of[int(t)]])
    record(csv_path)

    # Re-read the CSV exactly as written.
    with open(csv_path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        assert header == names + ["label"]
        data = list(r)
    raw = np.array([[float(v) for v in row[:-1]] for row in data])
    is_anom = np.array([row[-1] == "anomaly" for row in data])
    s = score(raw)
    pred = s > threshold
    auc = float(roc_auc_score(is_anom, s))
    res = {
        "model": "autoencoder.onnx",
        "input": {"name": "input", "shape": ["N", 30], "dtype": "float32",
                  "preprocess": "(x - mean) / scale from scaler.json, in float32"},
        "output": {"name": "score", "shape": ["N", 1], "dtype": "float32"},
        "threshold": threshold,
        "threshold_rule": "95th percentile (numpy linear) of benign training scores",
        "samples": int(len(data)),
        "anomalies": int(is_anom.sum()),
        "normals": int((~is_anom).sum()),
        "auc": round(auc, 6),
        "accuracy": round(float(accuracy_score(is_anom, pred)), 6),
        "precision": round(float(precision_score(is_anom, pred)), 6),
        "recall": round(float(recall_score(is_anom, pred)), 6),
        "min_abs_score_minus_threshold": float(np.abs(s - threshold).min()),
        "positive_class": "anomaly (malignant); flagged when score > threshold",
        "split": "load_breast_cancer, stratified 70/30, random_state=0 (test part)",
    }
    write_json(os.path.join(out, "expected.json"), res)
    print(f"anomaly: n={res['samples']} auc={auc:.4f} thr={threshold:.6f} "
          f"acc={res['accuracy']} prec={res['precision']} rec={res['recall']}")


# --------------------------------------------------------------------------- text direction
def build_text_direction(wheel):
    out = os.path.join(HERE, "text-direction")
    os.makedirs(out, exist_ok=True)
    dst = os.path.join(out, os.path.basename(RAPIDOCR_CLS_MEMBER))
    with zipfile.ZipFile(wheel) as z, z.open(RAPIDOCR_CLS_MEMBER) as src, open(dst, "wb") as f:
        shutil.copyfileobj(src, f)
    got = sha256(dst)
    assert got == RAPIDOCR_CLS_SHA256, f"unexpected rapidocr cls model sha256 {got}"
    record(dst)
    m = onnx.load(dst)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    print("text-direction: inputs", [(i.name, dims(i)) for i in m.graph.input],
          "outputs", [(o.name, dims(o)) for o in m.graph.output],
          "opset", [(o.domain, o.version) for o in m.opset_import])
    print(f"text-direction: ops={ops_of(m)}")
    sess = ort_session(dst)
    x = np.zeros((2, 3, 48, 192), np.float32)
    y = sess.run(None, {"x": x})[0]
    assert y.shape == (2, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rapidocr-wheel", required=True)
    args = ap.parse_args()
    np.random.seed(0)
    build_digits()
    build_anomaly()
    build_text_direction(args.rapidocr_wheel)
    print("\nsha256 of written files:")
    for p in sorted(set(written)):
        if os.path.dirname(p).endswith("heldout") and p.endswith(".png"):
            continue
        print(f"{sha256(p)}  {os.path.relpath(p, os.path.dirname(HERE))}")
    # Digest of the held-out tree, same as: cd models/digits/heldout && sha256sum * | sha256sum
    held = os.path.join(HERE, "digits", "heldout")
    listing = "".join(f"{sha256(os.path.join(held, n))}  {n}\n" for n in sorted(os.listdir(held)))
    print(f"{hashlib.sha256(listing.encode()).hexdigest()}  models/digits/heldout/ (sha256sum * | sha256sum)")

if __name__ == "__main__":
    main()
