"""ONNX exporters: trained VAE-CCA encoders plus their front-ends -> a model directory.

The model directory (docs/model-directory.md) is the only thing the daemon reads.
"""

import os

# ONNX Runtime's official builds send usage telemetry unless this is set before it initialises;
# a service (and its tests) must not phone home. setdefault: an operator's choice wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
