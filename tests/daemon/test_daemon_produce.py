"""`avindex produce`: what it sends (keys, values, headers, envelopes, tombstones), the
daemon's limits enforced before sending, and the real command against the real Tansu broker
with a real daemon indexing what it sent."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from daemon_harness import DaemonThread, header, read_topic, settings_for, wait_for

from avindex.daemon.messages import Record, parse_record
from avindex.tools.produce import Item, Limits, Refused, encode, items_from


@pytest.fixture
def folder(tmp_path, clips):
    root = tmp_path / "media"
    (root / "a").mkdir(parents=True)
    shutil.copy(clips[0], root / "a" / "one.mp4")
    shutil.copy(clips[7], root / "two.wav")
    (root / "notes.txt").write_text("not media")
    return root


def test_items_from_a_folder_a_file_and_a_manifest(folder):
    items = items_from(folder, {"source": "cam"})
    assert [i.media_id for i in items] == ["a/one.mp4", "two.wav"]  # stable, relative ids
    assert items[0].metadata == {"source": "cam"}
    assert [i.media_id for i in items_from(folder / "two.wav")] == ["two.wav"]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["id", "path", "label"], ["clip-1", "a/one.mp4", "7"]])
    [item] = items_from(manifest)
    assert item.media_id == "clip-1" and item.metadata == {"label": "7"}
    assert item.path == (folder / "a" / "one.mp4").resolve()
    with pytest.raises(FileNotFoundError):
        items_from(folder / "missing")


def test_bytes_and_envelopes_parse_as_the_daemon_reads_them(folder):
    item = items_from(folder / "a" / "one.mp4", {"lang": "en"})[0]
    value, headers = encode(item, by_reference=False, root=None, limits=Limits())
    request = parse_record(Record("t", 0, 0, item.media_id.encode(), value, tuple(headers)))
    assert request.media_id == "one.mp4" and request.data == (folder / "a" / "one.mp4").read_bytes()
    assert request.content_type == "video/mp4" and request.metadata == {"lang": "en"}
    value, headers = encode(item, by_reference=True, root=str(folder), limits=Limits())
    request = parse_record(Record("t", 0, 0, item.media_id.encode(), value, tuple(headers)))
    assert request.uri == (folder / "a" / "one.mp4").resolve().as_uri()
    assert request.metadata == {"lang": "en"}
    [wav] = items_from(folder / "two.wav")
    assert dict(encode(wav, by_reference=False, root=None, limits=Limits())[1])[
        "content-type"] == b"audio/wav"
    # a URL root: the daemon fetches from there (media.allowed_hosts)
    [one, _] = items_from(folder)
    value, _ = encode(one, by_reference=True, root="https://media.example/base/",
                      limits=Limits())
    assert json.loads(value)["uri"] == "https://media.example/base/a/one.mp4"


def test_the_daemons_limits_are_checked_before_sending(folder, tmp_path):
    item = items_from(folder / "a" / "one.mp4")[0]
    size = item.path.stat().st_size
    with pytest.raises(Refused, match="--by-reference"):
        encode(item, by_reference=False, root=None, limits=Limits(max_message_bytes=size - 1))
    with pytest.raises(Refused, match=r"media\.max_bytes"):
        encode(item, by_reference=False, root=None, limits=Limits(max_bytes=size - 1))
    encode(item, by_reference=True, root=None, limits=Limits(max_message_bytes=size - 1))
    with pytest.raises(Refused, match="outside --root"):
        encode(item, by_reference=True, root=str(tmp_path / "elsewhere"), limits=Limits())
    with pytest.raises(Refused, match=r"metadata_max_bytes"):
        encode(Item("x", item.path, {"k": "v" * 100}), by_reference=True, root=None,
               limits=Limits(metadata_max_bytes=50))


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
    return subprocess.run([sys.executable, "-m", "avindex.tools.cli", "produce", *argv,
                           "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=120)


def test_produce_command_feeds_a_daemon(broker, model_dir, folder, names, tmp_path):
    """Bytes, envelopes and tombstones from the real command; a daemon on Qdrant Edge indexes
    them; producing again overwrites; an item over the limit is refused with exit 1."""
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    done = run(str(folder), "--topic", topic, "--bootstrap-servers", broker.bootstrap,
               "--metadata", "source=cam")
    assert done.returncode == 0, done.stderr
    assert "sent 2 items as media bytes and 0 tombstones" in done.stdout
    done = run(str(folder / "a"), "--topic", topic, "--bootstrap-servers", broker.bootstrap,
               "--by-reference", "--root", str(folder))
    assert done.returncode == 0, done.stderr
    records = read_topic(broker.bootstrap, topic, 2, expected=3)
    assert sorted(r.key for r in records) == [b"a/one.mp4", b"one.mp4", b"two.wav"]
    raw = next(r for r in records if r.key == b"two.wav")
    assert header(raw, "content-type") == "audio/wav" and header(raw, "source") == "cam"
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            edge=tmp_path / "edge", media={"allowed_roots": [str(folder)]})
    daemon = DaemonThread(settings).start()
    try:
        store = daemon.daemon.sink.store
        collection = daemon.daemon.sink.collection
        wait_for(lambda: store.count(collection) == 3, 60, what="3 points")
        again = run(str(folder), "--topic", topic, "--bootstrap-servers", broker.bootstrap,
                    "--delete", "one.mp4")
        assert again.returncode == 0, again.stderr
        big = run(str(folder / "a" / "one.mp4"), "--topic", topic, "--bootstrap-servers",
                  broker.bootstrap, "--config", str(_limits_config(tmp_path, 100)))
        assert big.returncode == 1 and "--by-reference" in big.stderr

        def indexed() -> set[str]:
            return {p.payload["media_id"] for p in store.scroll(collection, limit=10)[0]}

        # re-sent: overwritten, not duplicated; one.mp4 deleted by its tombstone
        wait_for(lambda: daemon.metric("avindex_messages_deleted_total", topic=topic) == 1
                 and daemon.metric("avindex_messages_consumed_total", topic=topic) == 6, 60,
                 what="the second round consumed")
        wait_for(lambda: indexed() == {"a/one.mp4", "two.wav"}, 30, what="the final index")
    finally:
        assert daemon.stop() == 0
    assert read_topic(broker.bootstrap, dlq, 1, expected=0) == []


def _limits_config(tmp_path, max_message_bytes: int):
    path = tmp_path / "limits.yaml"
    path.write_text(f"kafka:\n  max_message_bytes: {max_message_bytes}\n")
    return path
