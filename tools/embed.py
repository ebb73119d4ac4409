"""`avindex embed --model DIR FILE...`: embeddings of files, through the daemon's own path.

The same model-directory checks, the same `decode_media` sampling and the same ONNX sessions as
`avindex run`, so its output is what the daemon stores (before Qdrant normalises vectors for
cosine distance). One JSON object per file and line:
`{"file", "modalities", "duration_s", "visual", "audio", "uncertainty"}`; a file that
cannot be embedded gives `{"file", "error", "message"}` and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from avindex.daemon.encoder import Encoder, embed_decoded
from avindex.daemon.media import DecodeLimits, MediaError, decode_media
from avindex.daemon.model_dir import ModelDirError, load_model_dir

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="model directory")
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"],
                        help="ONNX Runtime device (default: cpu)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="media files")


def main(args: argparse.Namespace) -> int:
    try:
        model = load_model_dir(args.model)
    except ModelDirError as exc:
        print(f"avindex embed: {exc}", file=sys.stderr)
        return 2
    encoder = Encoder(model, device=args.device, max_batch=1)
    visual, audio = model.visual_spec(), model.audio_spec()
    failed = 0
    for path in args.files:
        try:
            decoded = decode_media(path, visual, audio, DecodeLimits())
        except MediaError as exc:
            failed += 1
            print(json.dumps({"file": path, "error": exc.reason, "message": str(exc)}))
            continue
        out = {"file": path, "modalities": decoded.modalities,
               "duration_s": round(decoded.duration_s, 3), "uncertainty": {}}
        for modality, (vector, uncertainty) in embed_decoded(encoder, decoded).items():
            out[modality] = [float(x) for x in vector]
            out["uncertainty"][modality] = uncertainty
        print(json.dumps(out), flush=True)
    return 1 if failed else 0
