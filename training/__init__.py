"""avindex.training: AV-digits, front-ends, feature extraction, VAE-CCA and its evaluation.

Needs torch (the `train` extra). Decoding comes from `avindex.daemon.media`, so features are
computed from exactly what the daemon decodes. See docs/training.md and docs/frontends.md.
"""
