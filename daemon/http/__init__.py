"""avindex.daemon.http: the daemon's HTTP face — probes and metrics (`server.py`), search, the
web page and media (`api.py`), the upload parser (`multipart.py`) and the OpenAPI document
(`openapi.py`). It calls into the service (health, metrics, search); nothing in the service
calls into it except the wiring in `app.py`."""
