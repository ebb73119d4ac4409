"""Where searches run: a worker pool of `http.search_concurrency` threads, entered only with a
free slot (503 `overloaded` otherwise, at once, never queued), and only after the request's
body has arrived, so a slow upload holds no slot.

Slots are counted on the event loop (one thread), so no lock is needed; the work itself (fetch,
decode, embed, query) runs in the pool, never on the loop and never in the indexing pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from avindex.daemon.http.errors import ApiError
from avindex.daemon.http.queries import SearchCall
from avindex.daemon.messages import Fetcher, ItemError
from avindex.daemon.search import Searcher, SearchError

__all__ = ["FETCH_STATUS", "SearchService", "Slots"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# claim-check refusals (daemon/messages.py reasons) as answers to a `uri` query
FETCH_STATUS = {"uri_not_allowed": 403, "bad_uri": 400, "unsupported_uri_scheme": 400,
                "not_found": 404, "too_large": 413, "unreachable": 502, "http_error": 502}


class Slots:
    """A count of things in progress on the event loop; `take()` refuses instead of waiting."""

    def __init__(self, size: int, what: str) -> None:
        self.size, self.what, self.used = size, what, 0

    def take(self) -> None:
        if self.used >= self.size:
            raise ApiError(503, "overloaded", f"{self.size} {self.what} in progress; retry "
                           "shortly", {"Retry-After": "1"})
        self.used += 1

    def give(self) -> None:
        self.used -= 1


class SearchService:
    """The searcher (None until the model is warm and the collection checked), the pool and
    the slots; `run()` executes search calls in the pool."""

    def __init__(self, search_concurrency: int, fetcher: Fetcher) -> None:
        self.searcher: Searcher | None = None
        self.fetcher = fetcher
        self.slots = Slots(search_concurrency, "searches")
        self.pool = ThreadPoolExecutor(search_concurrency, thread_name_prefix="search")

    def ready(self) -> Searcher:
        if self.searcher is None:
            raise ApiError(503, "not_ready", "still starting (model warm-up, Qdrant); retry "
                           "shortly", {"Retry-After": "2"})
        return self.searcher

    async def run(self, work: Callable[[Searcher], T]) -> T:
        """`work(searcher)` in the pool, holding a slot; 503 when none is free."""
        searcher = self.ready()
        self.slots.take()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, work, searcher)
        finally:
            self.slots.give()

    def execute(self, searcher: Searcher, call: SearchCall) -> dict[str, Any]:
        """One search, in a worker thread: fetch (uri), decode and embed, query Qdrant."""
        try:
            if call.media_id is not None:
                return searcher.search_id(call.media_id, call.by, call.options)
            source: Any = call.media
            if call.uri is not None:
                source = self.fetcher.fetch(call.uri)
            return searcher.search_media(source, call.kind, call.by, call.options)
        except SearchError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from exc
        except ItemError as exc:
            raise ApiError(FETCH_STATUS.get(exc.reason, 400), exc.reason, str(exc)) from exc

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
