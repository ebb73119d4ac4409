"""The daemon as a real process: real signals, kill -9 and restart, start-up failures.

The store is Qdrant Edge on disk (`qdrant.path`), which one process may own at a time: the test
opens the folder only after the daemon process has exited (or was killed).
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from daemon_harness import (
    DaemonProcess,
    committed,
    produce,
    read_topic,
    settings_file,
    settings_for,
    wait_for,
)

from avindex.daemon.store_edge import EdgeStore
from avindex.tools.kafka_admin import free_port


def slow_messages(clips, media_server, seconds: float, count: int) -> list:
    """Envelopes whose media the test server delivers after `seconds` (keeps work in flight)."""
    out = []
    for i in range(count):
        path = f"{clips[i].parent.name}/{clips[i].name}"
        body = {"id": f"clip-{i:03d}", "uri": f"http://{media_server}/slow/{seconds}/{path}"}
        out.append((body["id"].encode(), json.dumps(body).encode(),
                    [("content-type", b"application/json")]))
    return out


def start_process(tmp_path, model_dir, broker, names, media_server, qdrant_dir, tag="d",
                  **sections) -> DaemonProcess:
    port = free_port()
    sections.setdefault("media", {})["allowed_hosts"] = [media_server]
    sections["qdrant"] = {"url": None, "path": str(qdrant_dir), **sections.get("qdrant", {})}
    settings = settings_for(
        model_dir, broker.bootstrap, names["topic"], group=names["group"], dlq=names["dlq"],
        http={"port": port}, log={"format": "json"}, **sections)
    config = settings_file(settings, tmp_path / f"{tag}.yaml")
    return DaemonProcess(config, tmp_path / f"{tag}.log", port)


def stored(qdrant_dir) -> list:
    """Every point in the (only) collection of an Edge folder no process holds."""
    store = EdgeStore(qdrant_dir)
    try:
        name = store.collections()[0]
        points, offset = [], None
        while True:
            batch, offset = store.scroll(name, limit=256, offset=offset)
            points += batch
            if offset is None:
                return points
    finally:
        store.close()


@pytest.mark.parametrize(("deadline", "delay"), [(20.0, 0.1), (1.0, 1.5)],
                         ids=["drains", "deadline-drops"])
def test_sigterm_during_load_exits_zero_with_commits_matching_qdrant(
        broker, model_dir, clips, media_server, names, tmp_path, deadline, delay):
    topic = names["topic"]
    broker.create_topic(topic, 2)
    broker.create_topic(names["dlq"], 1)
    qdrant_dir = tmp_path / "qdrant"
    ends = produce(broker.bootstrap, topic, slow_messages(clips, media_server, delay, 80))
    d = start_process(tmp_path, model_dir, broker, names, media_server, qdrant_dir,
                      kafka={"max_in_flight": 12}, media={"decode_workers": 4},
                      pipeline={"shutdown_deadline_s": deadline})
    try:
        wait_for(lambda: d.metric("avindex_messages_indexed_total") >= 8, 60,
                 what="indexing under way")
        in_flight = d.metric("avindex_in_flight_messages")
        d.signal(signal.SIGTERM)
        sent = time.monotonic()
        code = d.wait(deadline + 15)
        took = time.monotonic() - sent
    finally:
        d.kill()
    assert code == 0, d.log_lines()[-20:]
    assert in_flight > 0 and took < deadline + 5
    offsets = committed(broker.bootstrap, names["group"], topic, 2)
    assert any(offsets.values()) and offsets != ends  # stopped in the middle of the stream
    points = stored(qdrant_dir)
    below = {(p.payload["partition"], p.payload["offset"]) for p in points
             if p.payload["offset"] < (offsets[p.payload["partition"]] or 0)}
    # every committed message is in Qdrant (nothing committed that was not indexed) ...
    assert below == {(p, o) for p, end in offsets.items() for o in range(end or 0)}
    messages = [r.get("message", "") for r in d.log_records()]
    if deadline > 5:  # ... and after a full drain, exactly what was committed is in Qdrant
        assert len(points) == len(below)
        assert any(m.startswith("drained") for m in messages)
    else:
        assert any("shutdown deadline passed: dropped" in m for m in messages)
    assert read_topic(broker.bootstrap, names["dlq"], 1, expected=0) == []


def test_second_signal_forces_exit(broker, model_dir, clips, media_server, names, tmp_path):
    topic = names["topic"]
    broker.create_topic(topic, 1)
    broker.create_topic(names["dlq"], 1)
    produce(broker.bootstrap, topic, slow_messages(clips, media_server, 3.0, 10))
    d = start_process(tmp_path, model_dir, broker, names, media_server, tmp_path / "qdrant",
                      pipeline={"shutdown_deadline_s": 15.0})
    try:
        wait_for(lambda: d.metric("avindex_in_flight_messages") > 0, 60, what="work in flight")
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert d.proc.poll() is None  # draining
        d.signal(signal.SIGTERM)
        sent = time.monotonic()
        code = d.wait(10)
        assert code == 1 and time.monotonic() - sent < 5
    finally:
        d.kill()
    assert any("forced exit: dropped" in r.get("message", "") for r in d.log_records())
    assert committed(broker.bootstrap, names["group"], topic, 1) == {0: None}


def test_kill_9_and_restart_lose_nothing_and_duplicate_nothing(
        broker, model_dir, clips, media_server, names, tmp_path):
    topic = names["topic"]
    broker.create_topic(topic, 3)
    broker.create_topic(names["dlq"], 1)
    qdrant_dir = tmp_path / "qdrant"
    ends = produce(broker.bootstrap, topic, slow_messages(clips, media_server, 0.05, 120))
    first = start_process(tmp_path, model_dir, broker, names, media_server, qdrant_dir, "first",
                          kafka={"max_in_flight": 16})
    try:
        wait_for(lambda: first.metric("avindex_messages_indexed_total") >= 20, 60,
                 what="first daemon indexing")
        # on Edge a commit waits for a flush (qdrant.flush_interval_s): kill once one happened
        wait_for(lambda: any(committed(broker.bootstrap, names["group"], topic, 3).values()),
                 60, interval=0.3, what="a first commit")
    finally:
        first.kill()  # SIGKILL: no drain, no commit, no goodbye to the group
    before = committed(broker.bootstrap, names["group"], topic, 3)
    assert before != ends and any(before.values())
    # durability before commit: every message below a committed offset has its point on disk
    # in the Edge folder the killed process left behind (WAL recovery on open)
    after_kill = {(p.payload["partition"], p.payload["offset"]) for p in stored(qdrant_dir)}
    assert {(p, o) for p, end in before.items() for o in range(end or 0)} <= after_kill
    second = start_process(tmp_path, model_dir, broker, names, media_server, qdrant_dir,
                           "second")
    try:
        wait_for(lambda: committed(broker.bootstrap, names["group"], topic, 3) == ends, 90,
                 interval=0.5, what="everything committed after the restart")
        second.signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        second.kill()
    points = stored(qdrant_dir)
    ids = [p.payload["media_id"] for p in points]
    assert len(ids) == len(set(ids)) == 120
    assert set(ids) == {f"clip-{i:03d}" for i in range(120)}
    assert read_topic(broker.bootstrap, names["dlq"], 1, expected=0) == []


def test_unreachable_qdrant_at_start_is_not_ready_not_a_crash_loop(
        broker, model_dir, media_server, names, tmp_path):
    broker.create_topic(names["topic"], 1)
    dead = free_port()
    d = start_process(tmp_path, model_dir, broker, names, media_server, tmp_path / "unused",
                      qdrant={"path": None, "url": f"http://127.0.0.1:{dead}",
                              "prefer_grpc": False, "timeout_s": 1.0})
    try:
        def not_ready():
            status, body = d.get("/readyz")
            detail = json.loads(body) if status == 503 else {}
            return detail if detail.get("qdrant_ok") is False else None

        detail = wait_for(not_ready, 30, what="/readyz: 503 because of Qdrant")
        assert detail["stage"] == "qdrant" and detail["warmed_up"] is True
        assert "Connect" in detail["qdrant_error"] or "refused" in detail["qdrant_error"]
        assert d.get("/healthz")[0] == 200  # alive: an orchestrator must not restart it
        time.sleep(2)
        assert d.proc.poll() is None
        errors = [r["message"] for r in d.log_records() if r.get("level") == "ERROR"]
        assert any(f"Qdrant at http://127.0.0.1:{dead} is unreachable" in m for m in errors)
        d.signal(signal.SIGTERM)
        assert d.wait(10) == 0
    finally:
        d.kill()


def test_refused_model_directory_exits_2_with_the_reason(broker, model_dir, media_server, names,
                                                         tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    d = start_process(tmp_path, model_dir, broker, names, media_server, tmp_path / "q",
                      model={"dir": str(broken)})
    try:
        assert d.wait(30) == 2
    finally:
        d.kill()
    errors = [r["message"] for r in d.log_records() if r.get("level") == "ERROR"]
    assert any("cannot start: manifest.json does not match the schema" in m for m in errors)
