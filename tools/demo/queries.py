"""What the demo shows once the stream is indexed: cross-modal queries with held-out clips (a
spoken "seven" -> the videos; the same clip's pictures -> the sounds) and the MAP of the demo set,
all through the daemon's search API with `avindex.client`, as an application would ask."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from avindex.client import SearchClient, SearchError
from avindex.tools.demo.console import show, step

__all__ = ["QUERY_DIGITS", "mean_average_precision", "show_queries"]

QUERY_DIGITS = (7, 3, 0)


def _search(url: str, ask: Callable[[SearchClient], object]) -> tuple[int, dict]:
    """One search through the Python client: (status, answer in the API's JSON shape)."""
    with SearchClient(url) as client:
        try:
            found = ask(client)
        except SearchError as exc:
            return exc.status, {"error": exc.code, "message": exc.message}
    return 200, {"results": [vars(h) for h in found.hits]}


def show_queries(url: str, queries: list[dict]) -> None:
    with step("cross-modal queries with held-out clips", 20 + 5 * len(queries)):
        for row in queries:
            clip, label = Path(row["path"]), int(row["label"])
            status, answer = _search(url, lambda c, clip=clip: c.search_video(
                clip, by="audio", limit=5))
            show(f"\n  spoken \"{row['word']}\" ({row['language']}, {row['speaker']}, "
                 f"held out) -> videos:")
            _print_hits(status, answer, label, lambda m: f"shows {m['label']}")
            status, answer = _search(url, lambda c, clip=clip: c.search_video(clip, limit=5))
            show(f"  video showing {label} (its pictures only) -> sounds:")
            _print_hits(status, answer, label, lambda m: f"says \"{m['word']}\" ({m['language']})")
        show()


def _print_hits(status: int, answer: dict, label: int, describe: Callable) -> None:
    if status != 200:
        show(f"    search failed: {answer.get('error')}: {answer.get('message')}")
        return
    right = 0
    for hit in answer["results"]:
        meta = hit["payload"].get("metadata") or {}
        match = str(meta.get("label")) == str(label)
        right += match
        show(f"    {hit['rank']}. {hit['score']:.3f}  {'ok' if match else '--'}  "
             f"{describe(meta):<22} {hit['media_id']}")
    show(f"    {right} of {len(answer['results'])} are a {label}")


def mean_average_precision(url: str, rows: list[dict], max_queries: int) -> dict[str, float]:
    """MAP over the demo set: indexed clips as queries by their stored vectors, each ranking the
    whole set of the other modality (what `avindex evaluate` reports), through POST /v1/search.
    With more clips than `max_queries`, that many queries spread evenly over the set (every
    ranking still covers all of it)."""
    from avindex.training.metrics import average_precision  # numpy only: no torch needed

    n = len(rows)
    chosen = rows if not max_queries or max_queries >= n else \
        [rows[i] for i in np.linspace(0, n - 1, max_queries).round().astype(int)]
    with step(f"MAP of the demo set ({2 * len(chosen)} queries through POST /v1/search, "
              f"each ranking all {n} clips)", 20 + len(chosen) * n * 2e-4):
        labels = {r["id"]: r["label"] for r in rows}
        out: dict[str, float] = {"queries": float(len(chosen))}
        for by, name in (("audio", "A->V"), ("visual", "V->A")):
            aps = []
            for row in chosen:
                status, answer = _search(url, lambda c, row=row, by=by: c.search_id(
                    row["id"], by=by, limit=n, with_payload=False))
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
