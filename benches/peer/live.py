#!/usr/bin/env python3
"""The peer of `sluice-live-bench` (benches/live.sh): the digits job as a
gateway developer would serve it live without Sluice, with the same
guarantees Sluice gives (an input is journaled before it is acknowledged,
its result stored before it is delivered).

MQTT: subscribes to sensors/+/image at QoS 1 on the broker at
--broker-port with manual acknowledgements (paho-mqtt 2, MQTT 5). A worker
thread takes what has arrived (up to 32 at once), journals the messages in
SQLite (one commit) and acknowledges them, then decodes (Pillow),
preprocesses (numpy, /240), runs onnxruntime on the batch, postprocesses
(top-3 with labels), stores the results and deletes the journal rows (one
commit) and publishes each result at QoS 1 on sluice/results/digits as
{"id", "input": {"attributes": {"mqtt_topic"}}, "result": {...}}.

HTTP: POST /v1/infer/digits on --http-port (ThreadingHTTPServer): journal,
preprocess, run (a batch of one), store, answer the result.

SQLite in WAL mode with synchronous=FULL, as benches/peer/pipeline.py.
Prints "ready" on stdout once subscribed and listening; runs until SIGTERM.
"""
import argparse
import io
import json
import os
import queue
import signal
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO_ROOT, "models", "digits")
BATCH = 32


class Digits:
    """The model, its labels and the SQLite journal and outbox (one
    connection, one writer at a time)."""

    def __init__(self, data_dir, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(DIGITS, "digits_mlp.onnx"), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        with open(os.path.join(DIGITS, "labels.txt")) as f:
            self.labels = [line.strip() for line in f if line.strip()]
        self.db = sqlite3.connect(os.path.join(data_dir, "peer.sqlite"), isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE journal(seq INTEGER PRIMARY KEY, topic TEXT, data BLOB)")
        self.db.execute("CREATE TABLE results(id TEXT PRIMARY KEY, payload BLOB)")
        self.lock = threading.Lock()
        self.next_id = 0

    def journal(self, items):
        """items: [(topic, data)] -> their journal seqs, committed."""
        with self.lock:
            self.db.execute("BEGIN")
            seqs = [self.db.execute("INSERT INTO journal(topic, data) VALUES (?, ?)", item).lastrowid
                    for item in items]
            self.db.execute("COMMIT")
        return seqs

    def run(self, seqs, items):
        """Results of items [(topic, data)], stored with their journal rows deleted."""
        x = np.empty((len(items), 64), dtype=np.float32)
        for i, (_, data) in enumerate(items):
            img = Image.open(io.BytesIO(data)).convert("L")
            x[i] = np.asarray(img, dtype=np.float32).reshape(64) / np.float32(240)
        probs = self.session.run(None, {self.input: x})[0]
        docs = []
        with self.lock:
            for (topic, _), p in zip(items, probs):
                order = np.argsort(-p, kind="stable")[:3]
                top = [{"label": self.labels[i], "index": int(i), "score": float(p[i])} for i in order]
                self.next_id += 1
                docs.append(json.dumps({
                    "id": f"peer/digits/{self.next_id}",
                    "input": {"attributes": {"mqtt_topic": topic}},
                    "result": {"label": top[0]["label"], "score": top[0]["score"], "top": top},
                }).encode())
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO results(id, payload) VALUES (?, ?)",
                                [(json.loads(d)["id"], d) for d in docs])
            self.db.executemany("DELETE FROM journal WHERE seq = ?", [(s,) for s in seqs])
            self.db.execute("COMMIT")
        return docs


def serve_mqtt(digits, port, subscribed):
    arrived = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="live-peer", protocol=mqtt.MQTTv5,
                         manual_ack=True)
    client.max_inflight_messages_set(1000)

    def on_connect(client, userdata, flags, reason, properties):
        client.subscribe("sensors/+/image", qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        subscribed.set()

    def on_message(client, userdata, message):
        arrived.put(message)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port)

    def work():
        while True:
            batch = [arrived.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(arrived.get_nowait())
                except queue.Empty:
                    break
            items = [(m.topic, m.payload) for m in batch]
            seqs = digits.journal(items)
            for m in batch:
                client.ack(m.mid, m.qos)
            for doc in digits.run(seqs, items):
                client.publish("sluice/results/digits", doc, qos=1)

    threading.Thread(target=work, daemon=True).start()
    client.loop_start()
    return client


def serve_http(digits, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            if self.path != "/v1/infer/digits":
                self.send_error(404)
                return
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            items = [("http", data)]
            doc = digits.run(digits.journal(items), items)[0]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a caller that gave up (its timeout): nothing to tell

    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    digits = Digits(args.data_dir, args.threads)
    subscribed = threading.Event()
    client = serve_mqtt(digits, args.broker_port, subscribed)
    serve_http(digits, args.http_port)
    if not subscribed.wait(10):
        sys.exit("the peer could not subscribe")
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    client.loop_stop()


if __name__ == "__main__":
    main()
