"""ONNX exporters: trained VAE-CCA encoders plus their front-ends -> a model directory.

The model directory (docs/model-directory.md) is the only thing the daemon reads.
"""
