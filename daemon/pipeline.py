"""Decode -> batch -> embed -> upsert, with bounded queues and exactly one outcome per message.

Threads and queues (all bounded):

    runner --intake--> decode workers (N) --embed queue--> encoder --sink queue (1)--> sink

- Decode workers parse the message, fetch claim-check URIs and decode with PyAV.
- The encoder thread takes what piled up in the embed queue while it was busy (up to
  `model.max_batch`), embeds each modality in one padded call, and hands the batch on; the sink
  queue holds one batch, so the next batch is embedded while the previous one is upserted.
- The sink thread upserts (applied when the call returns) and deletes. Only an error that
  blames the points (`sink.is_invalid`) dead-letters them, one by one; every other failure is
  an outage, retried with capped exponential back-off for as long as it lasts while `outage`
  is set (the runner pauses every partition and readiness fails meanwhile).

Messages with the same key run one at a time, in the order they were submitted (the others
wait in `_waiting`), so a tombstone after an upsert of the same media id deletes it, and a
newer version of an item is never overwritten by an older one that decoded more slowly.
Tombstones (a key and a null value) skip decoding and embedding and delete the key's point
(`kafka.tombstones=delete`) or are dead-lettered (`dead_letter`).

Every message ends exactly once in `on_done(token)`: after the store confirmed its point (or
its deletion), or after the broker confirmed its dead letter. On abort (shutdown deadline) work
is dropped without `on_done`, so it is never committed and will be redelivered.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avindex.daemon.health import Health
from avindex.daemon.media import DecodedMedia, DecodeLimits, MediaError, decode_media
from avindex.daemon.messages import (
    Fetcher,
    ItemError,
    MediaRequest,
    Record,
    parse_record,
    tombstone_id,
)
from avindex.daemon.metrics import Metrics
from avindex.daemon.model_dir import ModelDir
from avindex.daemon.offsets import Token
from avindex.daemon.ports import DeadLetters, Embedder, Point, Sink
from avindex.daemon.retry import Aborted, Backoff, retry

__all__ = ["Job", "Pipeline", "Poison"]

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often blocked threads look at the abort flag


@dataclass(frozen=True)
class Poison:
    """Why a message is dead-lettered without being processed (the runner decided already)."""

    stage: str
    reason: str
    message: str


@dataclass
class Job:
    """One message on its way through the pipeline."""

    record: Record
    token: Token
    poison: Poison | None = None
    received_at: float = field(default_factory=time.monotonic)
    queued_at: float = 0.0
    request: MediaRequest | None = None
    decoded: DecodedMedia | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    uncertainty: dict[str, float] = field(default_factory=dict)
    delete: str | None = None  # a tombstone: the media id whose point goes
    finished: bool = False
    parked: bool = False  # waiting out an outage (Qdrant or the dead-letter topic)
    queued_behind: bool = False  # waiting for an earlier message of the same key to finish


class Pipeline:
    """Owns the stage threads and queues; the runner submits jobs and receives `on_done`."""

    def __init__(
        self,
        *,
        model: ModelDir,
        encoder: Embedder,
        sink: Sink,
        dead_letters: DeadLetters,
        fetcher: Fetcher,
        limits: DecodeLimits,
        metrics: Metrics,
        health: Health,
        on_done: Callable[[Token], None],
        intake_size: int,
        embed_queue: int = 64,
        decode_workers: int = 2,
        max_batch: int = 32,
        batch_max_wait_s: float = 0.0,
        backoff: Backoff = Backoff(),  # noqa: B008 (frozen dataclass)
        metadata_max_bytes: int = 65536,
        dead_letter_failures_unready: int = 3,
        tombstones: str = "delete",
    ) -> None:
        self.model, self.encoder, self.sink = model, encoder, sink
        self.dead_letters, self.fetcher, self.limits = dead_letters, fetcher, limits
        self.metrics, self.health, self.on_done = metrics, health, on_done
        self.max_batch, self.batch_max_wait_s = max_batch, batch_max_wait_s
        self.backoff, self.metadata_max_bytes = backoff, metadata_max_bytes
        self.dead_letter_failures_unready = dead_letter_failures_unready
        self._dead_letter_failures = 0  # in a row, over all threads (under _pending_lock)
        self.tombstones = tombstones
        self.visual_spec, self.audio_spec = model.visual_spec(), model.audio_spec()
        # The runner keeps `pending` below its cap and submits at most one poll's worth more,
        # so put_nowait into a queue of intake_size (cap + one poll) cannot fail.
        self._intake: queue.Queue[Job] = queue.Queue(maxsize=intake_size)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._jobs: dict[int, Job] = {}  # unfinished, oldest first (dicts keep insertion order)
        self._busy: set[bytes] = set()  # keys with a job in the stages
        self._waiting: dict[bytes, deque[Job]] = {}  # later jobs of those keys, in order
        self._keys_lock = threading.Lock()
        self.outage = threading.Event()  # the store is failing: writes are being retried
        self._embed_q: queue.Queue[Job] = queue.Queue(maxsize=embed_queue)
        self._sink_q: queue.Queue[list[Job]] = queue.Queue(maxsize=1)
        self._abort = threading.Event()
        self._threads = [threading.Thread(target=self._guard, args=(self._decode_loop,),
                                          name=f"decode-{i}", daemon=True)
                         for i in range(decode_workers)]
        self._threads.append(threading.Thread(target=self._guard, args=(self._encode_loop,),
                                              name="encoder", daemon=True))
        self._threads.append(threading.Thread(target=self._guard, args=(self._sink_loop,),
                                              name="sink", daemon=True))
        self.crashed: str | None = None

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        with self._pending_lock:
            self._pending += 1
            self._jobs[id(job)] = job
        key = job.record.key
        if key is not None:
            with self._keys_lock:
                if key in self._busy:
                    job.queued_behind = True
                    self._waiting.setdefault(key, deque()).append(job)
                    return
                self._busy.add(key)
        self._intake.put_nowait(job)

    def _release(self, job: Job) -> None:
        """The job's key is free again: start the next job of that key, if one waits. Every
        waiting job is counted in `pending`, which the runner keeps below the intake's size,
        so put_nowait cannot fail."""
        key = job.record.key
        if key is None:
            return
        with self._keys_lock:
            waiting = self._waiting.get(key)
            if not waiting:
                self._busy.discard(key)
                return
            following = waiting.popleft()
            if not waiting:
                del self._waiting[key]
            following.queued_behind = False
        self._intake.put_nowait(following)

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished, including those of partitions revoked meanwhile
        (the checkpoint forgets those, the pipeline still holds them)."""
        with self._pending_lock:
            return self._pending

    def oldest_age(self, *, active_only: bool = False) -> float:
        """Seconds since the oldest unfinished message was taken; with `active_only`, of the
        oldest one not waiting out an outage (a stuck fetch, decode or inference shows here)."""
        now = time.monotonic()
        with self._pending_lock:
            for job in self._jobs.values():
                if not (active_only and (job.parked or job.queued_behind)):
                    return now - job.received_at
        return 0.0

    def abort(self) -> None:
        """Stop now; unfinished jobs are dropped (never acknowledged, so never committed)."""
        self._abort.set()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def depths(self) -> dict[str, int]:
        return {"intake": self._intake.qsize(), "embed": self._embed_q.qsize(),
                "sink": self._sink_q.qsize()}

    def _guard(self, loop: Callable[[], None]) -> None:
        """A stage that dies from a bug must not stall silently: report it (liveness fails)."""
        try:
            loop()
        except Exception as exc:
            self.crashed = f"{threading.current_thread().name}: {exc!r}"
            self.health.set(crashed=self.crashed)
            log.exception("pipeline thread %s crashed", threading.current_thread().name)

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._abort.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # ----------------------------------------------------------------------------- outcomes
    def _finish(self, job: Job) -> None:
        if job.finished:
            raise RuntimeError(f"message {job.token} acknowledged twice")
        job.finished = True
        with self._pending_lock:
            self._pending -= 1
            self._jobs.pop(id(job), None)
        self._release(job)
        self.on_done(job.token)

    def _dead_letter(self, job: Job, stage: str, reason: str, message: str,
                     exception: str) -> None:
        """Write the dead letter (retrying until the broker takes it), then acknowledge."""
        self.metrics.failures.labels(stage, reason).inc()
        r = job.record
        log.warning("dead-lettering %s/%d@%d: %s %s: %s", r.topic, r.partition, r.offset, stage,
                    reason, message, extra={"fields": {
                        "topic": r.topic, "partition": r.partition, "offset": r.offset,
                        "stage": stage, "reason": reason}})

        def on_failure(exc: BaseException, attempt: int, delay: float) -> None:
            job.parked = True
            self.metrics.failures.labels("dead_letter", type(exc).__name__).inc()
            self.metrics.retries.labels("dead_letter").inc()
            log.warning("dead-letter write failed (%s); retry %d in %.1fs", exc, attempt + 1, delay)
            with self._pending_lock:
                self._dead_letter_failures += 1
                failing = self._dead_letter_failures >= self.dead_letter_failures_unready
            if failing:  # readiness fails until a dead letter gets through again
                self.health.set(dead_letter_ok=False,
                                dead_letter_error=f"{type(exc).__name__}: {exc}"[:300])

        try:
            retry(lambda: self.dead_letters.send(r, reason=reason, stage=stage, message=message,
                                                 exception=exception),
                  is_transient=lambda exc: True, backoff=self.backoff, stop=self._abort,
                  on_failure=on_failure)
        except Aborted:
            return
        with self._pending_lock:
            self._dead_letter_failures = 0
        self.health.set(dead_letter_ok=True, dead_letter_error=None)
        self.metrics.dead_lettered.labels(stage, reason).inc()
        self._finish(job)

    # ------------------------------------------------------------------------------- decode
    def _decode_loop(self) -> None:
        while not self._abort.is_set():
            try:
                job = self._intake.get(timeout=POLL_S)
            except queue.Empty:
                continue
            self.metrics.queue_seconds.labels("intake").observe(
                time.monotonic() - job.received_at)
            if self._decode(job):
                job.queued_at = time.monotonic()
                self._put(self._embed_q, job)

    def _decode(self, job: Job) -> bool:
        if job.poison is not None:
            p = job.poison
            self._dead_letter(job, p.stage, p.reason, p.message, "Quarantined")
            return False
        stage = "parse"  # where an unexpected error happened, for its dead letter
        try:
            if job.record.value is None:  # a tombstone
                media_id = tombstone_id(job.record)
                if self.tombstones != "delete":
                    raise ItemError("parse", "tombstone", f"tombstone for {media_id!r} "
                                    "(kafka.tombstones=dead_letter)")
                job.delete = media_id
                return True
            job.request = parse_record(job.record, self.metadata_max_bytes)
            source: Any = job.request.data
            if job.request.uri is not None:
                stage = "fetch"
                start = time.perf_counter()
                source = self.fetcher.fetch(job.request.uri)
                self.metrics.fetch_seconds.observe(time.perf_counter() - start)
            stage = "decode"
            start = time.perf_counter()
            job.decoded = decode_media(source, self.visual_spec, self.audio_spec, self.limits)
            self.metrics.decode_seconds.observe(time.perf_counter() - start)
            return True
        except ItemError as exc:
            self._dead_letter(job, exc.stage, exc.reason, str(exc), type(exc).__name__)
        except MediaError as exc:
            self._dead_letter(job, "decode", exc.reason, str(exc), type(exc).__name__)
        except Exception as exc:  # an item must never take the daemon down
            log.exception("unexpected error in %s of %s", stage, job.token)
            self._dead_letter(job, stage, "internal_error", repr(exc)[:1000], type(exc).__name__)
        return False

    # ------------------------------------------------------------------------------- encode
    def _take_batch(self) -> list[Job]:
        """What piled up while the encoder was busy, up to max_batch (optionally wait a bit)."""
        try:
            batch = [self._embed_q.get(timeout=POLL_S)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_max_wait_s
        while len(batch) < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                batch.append(self._embed_q.get(timeout=wait) if wait > 0
                             else self._embed_q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _encode_loop(self) -> None:
        while not self._abort.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            now = time.monotonic()
            for job in batch:
                self.metrics.queue_seconds.labels("embed").observe(now - job.queued_at)
            deletes = [j for j in batch if j.delete is not None]
            alive = self._embed([j for j in batch if j.delete is None]) + deletes
            if alive and not self._abort.is_set():
                self._put(self._sink_q, alive)

    def _inputs(self, job: Job, modality: str) -> np.ndarray | None:
        assert job.decoded is not None
        return job.decoded.frames if modality == "visual" else job.decoded.audio

    def _embed(self, batch: list[Job]) -> list[Job]:
        """Embed every modality of every job; jobs that fail are dead-lettered and dropped."""
        alive = batch
        for modality in self.encoder.modalities:
            jobs = [j for j in alive if self._inputs(j, modality) is not None]
            if not jobs:
                continue
            failed = self._embed_modality(modality, jobs)
            if failed is None:  # aborted
                return []
            alive = [j for j in alive if id(j) not in failed]
        return alive

    def _embed_modality(self, modality: str, jobs: list[Job]) -> set[int] | None:
        """Returns the ids of jobs that were dead-lettered, or None when aborted."""
        items = [self._inputs(j, modality) for j in jobs]
        attempt = 0
        while not self._abort.is_set():
            try:
                out = self._infer(modality, items)
                break
            except Exception as exc:
                if self._encoder_works(modality):
                    return self._embed_one_by_one(modality, jobs)
                # The encoder itself is failing (device lost, out of memory): nothing an item
                # did; keep the items and retry, health reports the failure meanwhile.
                delay = self.backoff.delay(attempt)
                attempt += 1
                self.metrics.failures.labels("inference", "encoder_unavailable").inc()
                self.metrics.retries.labels("inference").inc()
                log.error("%s inference failing (%s); retrying in %.1fs", modality, exc, delay)
                if self._abort.wait(delay):
                    return None
        else:
            return None
        return self._assign(modality, jobs, out.embedding, out.variance)

    def _infer(self, modality: str, items: list) -> Any:
        start = time.perf_counter()
        out = self.encoder.embed(modality, items)
        self.metrics.inference_seconds.labels(modality).observe(time.perf_counter() - start)
        self.metrics.inference_batch.labels(modality).observe(len(items))
        self.health.set(last_inference_ok=True)
        return out

    def _encoder_works(self, modality: str) -> bool:
        """Probe with a tiny known-good input: tells a poison item from a broken encoder."""
        probe = self.encoder.max_input(modality)[:1]
        try:
            self.encoder.embed(modality, [probe])
            return True
        except Exception:
            self.health.set(last_inference_ok=False)
            return False

    def _embed_one_by_one(self, modality: str, jobs: list[Job]) -> set[int]:
        failed: set[int] = set()
        for job in jobs:
            try:
                out = self._infer(modality, [self._inputs(job, modality)])
            except Exception as exc:
                self._dead_letter(job, "inference", "inference_error", repr(exc),
                                  type(exc).__name__)
                failed.add(id(job))
                continue
            failed |= self._assign(modality, [job], out.embedding, out.variance)
        return failed

    def _assign(self, modality: str, jobs: list[Job], emb: np.ndarray,
                var: np.ndarray) -> set[int]:
        failed: set[int] = set()
        for job, e, v in zip(jobs, emb, var, strict=True):
            problem = None
            if not (np.isfinite(e).all() and np.isfinite(v).all()):
                problem = "non_finite_embedding"
            elif not np.any(e):  # cosine similarity is undefined for a zero vector
                problem = "zero_embedding"
            if problem is not None:
                self._dead_letter(job, "inference", problem, f"{modality} embedding: {problem}",
                                  "ValueError")
                failed.add(id(job))
                continue
            job.vectors[modality] = e
            job.uncertainty[modality] = float(v.mean())
        return failed

    # --------------------------------------------------------------------------------- sink
    def _point(self, job: Job) -> Point:
        r, req, dec = job.record, job.request, job.decoded
        assert req is not None and dec is not None
        payload = {
            "media_id": req.media_id,
            "uri": req.uri,
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "duration_s": round(dec.duration_s, 3),
            "modalities": sorted(job.vectors),
            "model_id": self.model.model_id,
            "model_version": self.model.model_version,
            "indexed_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "uncertainty": {m: round(u, 6) for m, u in job.uncertainty.items()},
            "metadata": req.metadata,
        }
        return Point(media_id=req.media_id,
                     vectors={m: v.astype(float).tolist() for m, v in job.vectors.items()},
                     payload=payload)

    def _sink_loop(self) -> None:
        while not self._abort.is_set():
            try:
                jobs = self._sink_q.get(timeout=POLL_S)
            except queue.Empty:
                continue
            writes = [j for j in jobs if j.delete is None]
            indexed = self._upsert(writes, [self._point(j) for j in writes]) if writes else []
            for job in self._delete([j for j in jobs if j.delete is not None]):
                self.metrics.deleted.labels(job.record.topic).inc()
                self._finish(job)
            now_ms = time.time() * 1000
            for job in indexed:
                self.metrics.indexed.labels(job.record.topic).inc()
                if job.record.timestamp_ms:
                    self.metrics.end_to_end_seconds.observe(
                        max(0.0, (now_ms - job.record.timestamp_ms) / 1000))
                self._finish(job)

    def _on_outage(self, stage: str, jobs: list[Job]):
        count = len(jobs)

        def on_failure(exc: BaseException, attempt: int, delay: float) -> None:
            for job in jobs:
                job.parked = True
            reason = self.sink.failure_reason(exc)
            self.outage.set()
            self.metrics.failures.labels(stage, reason).inc()
            self.metrics.retries.labels(stage).inc()
            self.health.set(last_upsert_ok=False, qdrant_ok=False, qdrant_error=repr(exc)[:300])
            log.warning("%s of %d points failed (%s: %s); outage: retry %d in %.1fs, nothing "
                        "is committed or dead-lettered meanwhile", stage, count, reason,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                        attempt + 1, delay)
        return on_failure

    def _recovered(self) -> None:
        if self.outage.is_set():
            log.info("the vector store answers again; outage over")
            self.outage.clear()
        self.health.set(last_upsert_ok=True, qdrant_ok=True, qdrant_error=None)

    def _upsert(self, jobs: list[Job], points: list[Point]) -> list[Job]:
        """Jobs whose points the store applied; points it refused are dead-lettered alone."""

        def attempt() -> float:
            start = time.perf_counter()
            self.sink.write_batch(points)
            return time.perf_counter() - start

        try:
            seconds = retry(attempt, is_transient=lambda exc: not self.sink.is_invalid(exc),
                            backoff=self.backoff, stop=self._abort,
                            on_failure=self._on_outage("upsert", jobs))
        except Aborted:
            return []
        except Exception as exc:  # the store refused the data itself: find the culprit(s)
            self._recovered()
            if len(points) == 1:
                self._dead_letter(jobs[0], "upsert", "rejected", repr(exc)[:1000],
                                  type(exc).__name__)
                return []
            indexed: list[Job] = []
            for job, point in zip(jobs, points, strict=True):
                indexed += self._upsert([job], [point])
            return indexed
        self.metrics.upsert_seconds.observe(seconds)
        self.metrics.upsert_batch.observe(len(points))
        self._recovered()
        return jobs

    def _delete(self, jobs: list[Job]) -> list[Job]:
        """Tombstones applied (retried through outages like upserts)."""
        if not jobs:
            return []
        ids = [j.delete for j in jobs if j.delete is not None]
        try:
            retry(lambda: self.sink.delete(ids), is_transient=lambda exc: not
                  self.sink.is_invalid(exc), backoff=self.backoff, stop=self._abort,
                  on_failure=self._on_outage("delete", jobs))
        except Aborted:
            return []
        except Exception as exc:  # a refused delete: it cannot be the other jobs' fault
            self._recovered()
            for job in jobs:
                self._dead_letter(job, "delete", "rejected", repr(exc)[:1000],
                                  type(exc).__name__)
            return []
        self._recovered()
        return jobs
