"""The HTTP API of the daemon and of `avindex serve`: Starlette on uvicorn.

`server.HttpServer` runs uvicorn on its own thread and event loop; `app.build_app` wires the
routes (`routes.ENDPOINTS`, from which the OpenAPI document is also built); bodies are read
with a total deadline and streaming limits (`body`), keys and Host headers checked (`auth`),
searches run in a bounded worker pool (`search_api`), never in the indexing loop.
"""
