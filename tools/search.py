"""`avindex search`: which videos fit this sound, which sounds fit this video or image.

Two ways to answer:

- straight from the store: a Qdrant server (`--qdrant-url`, or `qdrant.url` of
  `--config`/AVINDEX_*) or a Qdrant Edge folder (`--qdrant-path`, or `qdrant.path`); the file is
  embedded here with `--model` (or `model.dir`), which must be the model version the collection
  was built with. An Edge folder belongs to one process: when a running daemon holds it, the
  CLI says so and asks that daemon instead (its port from `--config`, else `--daemon`, else
  http://127.0.0.1:8080);
- through a running daemon or `avindex serve` (`--daemon URL`, or when no store is named),
  with `avindex.client.SearchClient` (POST /v1/search; `--api-key`, else the first of
  `http.api_keys` of `--config`): the service embeds the file.

Prints a ranked table (score, media id, producer metadata), or the JSON answer with `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from avindex.client import SearchClient, SearchError
from avindex.daemon.settings import QdrantSettings, Settings, SettingsError, load_settings

__all__ = ["configure", "filter_json", "format_results", "main"]

DEFAULT_DAEMON = "http://127.0.0.1:8080"


def configure(parser: argparse.ArgumentParser) -> None:
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--audio", type=Path, metavar="FILE",
                       help="a sound (or a video's sound): find the videos that fit it")
    query.add_argument("--video", type=Path, metavar="FILE",
                       help="a video: find sounds by its pictures (or videos by its sound, "
                       "--by audio)")
    query.add_argument("--image", type=Path, metavar="FILE", help="a picture: find sounds")
    query.add_argument("--id", metavar="MEDIA_ID",
                       help="an indexed media id: search with its stored vector (--by audio "
                       "by default)")
    parser.add_argument("--by", choices=["audio", "visual"],
                        help="search with the query's sound or its pictures (video, --id)")
    parser.add_argument("--top-k", type=int, default=10, metavar="K", help="results (10)")
    parser.add_argument("--offset", type=int, default=0, metavar="N",
                        help="skip the first N results (pages of one ranking)")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="payload filter, repeatable, all must hold "
                        "(e.g. metadata.label=7, modalities=visual); or one Qdrant filter as "
                        "JSON ('{\"must\": [...]}')")
    parser.add_argument("--json", action="store_true", help="print the JSON answer")
    parser.add_argument("--daemon", metavar="URL",
                        help=f"ask this running daemon or `avindex serve` (default when no "
                        f"store is named: {DEFAULT_DAEMON} or the port of --config)")
    parser.add_argument("--api-key", metavar="KEY",
                        help="API key for --daemon (default: the first of http.api_keys of "
                        "--config)")
    parser.add_argument("--qdrant-url", metavar="URL",
                        help="query this Qdrant server directly (needs --model)")
    parser.add_argument("--qdrant-path", metavar="DIR",
                        help="query a Qdrant Edge folder directly (e.g. `avindex demo --state "
                        "DIR` keeps one in DIR/qdrant; needs --model); when a running daemon "
                        "holds it, the daemon is asked instead")
    parser.add_argument("--model", metavar="MODEL_DIR",
                        help="model directory for direct queries (default: model.dir)")
    parser.add_argument("--collection", metavar="NAME",
                        help="collection or alias for direct queries (default: qdrant.alias)")
    parser.add_argument("--config", metavar="FILE",
                        help="the daemon's settings file (default: $AVINDEX_CONFIG)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (120)")


def _settings(args: argparse.Namespace) -> Settings | None:
    """The daemon's settings when a config file or AVINDEX_* variables exist, else None."""
    overrides = {}
    if args.model:
        overrides["AVINDEX_MODEL_DIR"] = args.model
    environ = {**os.environ, **overrides}
    if not (args.config or any(k.startswith("AVINDEX_") for k in environ)):
        return None
    if args.qdrant_url or args.qdrant_path:  # the flag replaces the environment's target
        environ = {k: v for k, v in environ.items()
                   if k not in ("AVINDEX_QDRANT_PATH", "AVINDEX_QDRANT_URL")}
        if args.qdrant_url:
            environ["AVINDEX_QDRANT_URL"] = args.qdrant_url
        else:
            environ["AVINDEX_QDRANT_PATH"] = args.qdrant_path
    settings, _ = load_settings(args.config, environ)
    return settings


def _query(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    for kind in ("audio", "video", "image"):
        path = getattr(args, kind)
        if path is not None:
            return kind, path
    return None, None


def filter_json(items: list[str]) -> dict | None:
    """`--filter` values as Qdrant's JSON filter: one JSON object as given, or `key=value`
    items (all must hold) as `avindex.daemon.search.parse_filters` reads them."""
    from avindex.daemon.search import SearchError as Refused
    from avindex.daemon.search import parse_filters

    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            return json.loads(items[0])
        except json.JSONDecodeError as exc:
            raise Refused(400, "bad_filter", f"--filter is not JSON: {exc}") from exc
    parsed = parse_filters(items)
    return parsed.model_dump(exclude_none=True, mode="json") if parsed is not None else None


def ask_service(url: str, api_key: str | None, kind: str | None, path: Path | None,
                args: argparse.Namespace) -> tuple[int, dict]:
    """One search through `SearchClient`: (HTTP status, JSON answer)."""
    from avindex.daemon.search import SearchError as Refused

    try:
        options = {"limit": args.top_k, "offset": args.offset, "by": args.by,
                   "filter": filter_json(args.filter)}
    except Refused as exc:
        return 2, {"error": exc.code, "message": str(exc)}
    with SearchClient(url, api_key=api_key, timeout=args.timeout) as client:
        try:
            if path is None:
                result = client.search_id(args.id, **options)
            else:
                search = {"audio": client.search_audio, "image": client.search_image}.get(
                    kind or "video", client.search_video)
                result = search(path, **options)
        except SearchError as exc:
            return exc.status, {"error": exc.code, "message": exc.message}
    return 200, {"query": result.query, "collection": result.collection,
                 "model_version": result.model_version, "took_ms": result.took_ms,
                 "results": [vars(h) for h in result.hits]}


def _direct(args: argparse.Namespace, settings: Settings | None, kind: str | None,
            path: Path | None) -> tuple[int, dict] | None:
    """Embed here and query the store directly (a server, or an Edge folder). None when the
    Edge folder is held by a running daemon: then ask the daemon."""
    from qdrant_client import models

    from avindex.daemon.encoder import Encoder
    from avindex.daemon.model_dir import ModelDirError, load_model_dir
    from avindex.daemon.search import Options, Searcher, SearchError
    from avindex.daemon.sink import CollectionMismatchError, StoreBusyError, open_store

    if settings is not None:
        qdrant = settings.qdrant
    elif args.qdrant_path:
        qdrant = QdrantSettings(path=args.qdrant_path)
    else:
        qdrant = QdrantSettings(url=args.qdrant_url)
    model_dir = args.model or (settings.model.dir if settings else None)
    if not model_dir:
        return 2, {"error": "bad_request", "message": "direct queries need --model MODEL_DIR "
                   "(the model the collection was built with)"}
    try:
        model = load_model_dir(model_dir)
    except ModelDirError as exc:
        return 2, {"error": "bad_request", "message": str(exc)}
    if qdrant.path and not Path(qdrant.path).is_dir():
        return 2, {"error": "bad_request", "message": f"no Qdrant Edge folder at {qdrant.path}"}
    try:
        store = open_store(qdrant)
    except CollectionMismatchError as exc:
        return 2, {"error": "bad_request", "message": str(exc)}
    try:
        searcher = Searcher(store, model, Encoder(model, device="cpu", max_batch=1),
                            args.collection or qdrant.alias)
        store.count(searcher.collection)  # Edge: opens the shard (fails when a daemon has it)
        filter_ = filter_json(args.filter)
        options = Options(limit=args.top_k, offset=args.offset,
                          filter=models.Filter.model_validate(filter_) if filter_ else None)
        if path is not None:
            if not path.is_file():
                return 2, {"error": "no_file", "message": f"no such file: {path}"}
            return 200, searcher.search_media(path, kind, args.by, options)
        return 200, searcher.search_id(args.id, args.by, options)
    except StoreBusyError as exc:
        print(f"avindex search: {exc}: a running daemon holds it, asking that daemon",
              file=sys.stderr)
        return None
    except SearchError as exc:
        return exc.status, {"error": exc.code, "message": str(exc)}
    finally:
        store.close()


def format_results(answer: dict[str, Any]) -> str:
    """A ranked table for people: rank, score, media id, producer metadata."""
    q = answer["query"]
    lines = [f"{q.get('kind')} query by {q.get('by')} -> {q.get('vector')} vectors of "
             f"{answer['collection']} ({len(answer['results'])} results, {answer['took_ms']} ms)"]
    for hit in answer["results"]:
        meta = hit["payload"].get("metadata") or {}
        shown = " ".join(f"{k}={v}" for k, v in list(meta.items())[:4])
        lines.append(f"{hit['rank']:>4}  {hit['score']:.4f}  {hit['media_id']}  {shown}".rstrip())
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    kind, path = _query(args)
    try:
        named = args.qdrant_url or args.qdrant_path
        settings = None if args.daemon and not named else _settings(args)
    except SettingsError as exc:
        print(f"avindex search: {exc}", file=sys.stderr)
        return 2
    answer: tuple[int, dict] | None = None
    if named or (not args.daemon and settings
                 and (settings.qdrant.url or settings.qdrant.path)):
        answer = _direct(args, settings, kind, path)
    if answer is None:
        url = args.daemon or DEFAULT_DAEMON
        if settings is not None and not args.daemon:
            host = settings.http.host if settings.http.host not in ("", "0.0.0.0", "::") \
                else "127.0.0.1"
            url = f"http://{host}:{settings.http.port}"
        api_key = args.api_key or (settings.http.api_keys[0] if settings is not None
                                   and settings.http.api_keys else None)
        if path is not None and not path.is_file():
            print(f"avindex search: no such file: {path}", file=sys.stderr)
            return 2
        answer = ask_service(url, api_key, kind, path, args)
        if answer[0] == 0:
            print(f"avindex search: the service at {url} is not reachable "
                  f"({answer[1].get('message')}); start `avindex run` or `avindex serve`, or "
                  "give --daemon URL / --qdrant-url URL / --qdrant-path DIR", file=sys.stderr)
            return 3
    status, body = answer
    if status != 200:
        print(f"avindex search: {body.get('error')}: {body.get('message')}", file=sys.stderr)
        return 1 if status != 2 else 2
    print(json.dumps(body, indent=1) if args.json else format_results(body))
    return 0
