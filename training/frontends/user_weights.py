"""Weights files that the user supplies (the paper's extractors): strict reading and provenance.

No model hub can be reached, and the paper's extractors (VGG19, VGGish) are not on any package
index with a licence that lets us ship them, so the user hands avindex a file. Everything about
that file is checked before it is used: that it exists, that torch can read it without running
code (`weights_only=True`), that it has exactly the expected tensor names and shapes, and, when
features were extracted from it earlier, that it is still the same file (sha256).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

Shapes = Mapping[str, tuple[int, ...]]
_LISTED = 6  # names shown per problem in an error message


class WeightsFileError(ValueError):
    """A user-supplied weights file is missing, unreadable, changed, or has the wrong layout."""


def checked_path(path: str | Path, what: str, layout: str) -> Path:
    """The absolute path of an existing file, or an error naming what the file should hold."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise WeightsFileError(f"{what} weights file {resolved} does not exist; expected {layout}")
    return resolved


def file_digest(path: Path, expected: str | None, what: str) -> str:
    """sha256 of the file; refuses a file that differs from the one features were made with."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if expected and digest != expected:
        raise WeightsFileError(
            f"{what} weights file {path} has sha256 {digest}, but the features were extracted "
            f"with {expected}: pass the same file (or re-extract the features)"
        )
    return digest


def read_tensors(path: Path, what: str, layout: str) -> dict[str, torch.Tensor]:
    """name -> tensor from a torch file (a state dict, or {'state_dict': ...}) or a .npz."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {k: torch.from_numpy(npz[k]) for k in npz.files}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the same thing to the user
        raise WeightsFileError(
            f"{what} weights file {path} could not be read as a tensor file "
            f"({type(exc).__name__}: {exc}); expected {layout}"
        ) from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise WeightsFileError(
            f"{what} weights file {path} is not a mapping of names to tensors; expected {layout}"
        )
    return dict(data)


def check_layout(tensors: Mapping[str, torch.Tensor], required: Shapes, optional: Shapes,
                 what: str, path: Path, layout: str) -> None:
    """Every required name present, nothing unknown, every shape as expected; else one error."""
    expected = {**required, **optional}
    missing = sorted(set(required) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k} {tuple(v.shape)} (expected {expected[k]})"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != expected[k]
    )
    problems = [
        f"{label} {', '.join(names[:_LISTED])}{' …' if len(names) > _LISTED else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)) if names
    ]
    if problems:
        raise WeightsFileError(
            f"{what} weights file {path} does not have the expected layout ({'; '.join(problems)})"
            f"; expected {layout}"
        )


def load_weights(path: str | Path, required: Shapes, optional: Shapes, what: str, layout: str,
                 expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, sha256) of a checked user weights file."""
    resolved = checked_path(path, what, layout)
    digest = file_digest(resolved, expected_sha256, what)
    tensors = read_tensors(resolved, what, layout)
    check_layout(tensors, required, optional, what, resolved, layout)
    return {k: v.to(torch.float32) for k, v in tensors.items()}, digest
