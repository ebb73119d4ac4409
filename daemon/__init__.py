"""avindex.daemon: the streaming indexer (Kafka -> PyAV -> ONNX Runtime -> Qdrant, docs/daemon.md)
and the media decoding shared with training. Nothing in this package imports torch."""
