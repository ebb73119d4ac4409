"""avindex.daemon: the streaming indexer (Kafka -> PyAV -> ONNX Runtime -> Qdrant, docs/daemon.md)
and the media decoding shared with training. Nothing in this package imports torch."""

import os

# ONNX Runtime's official builds send usage telemetry unless this is set before it initialises;
# a service (and its tests) must not phone home. setdefault: an operator's choice wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
