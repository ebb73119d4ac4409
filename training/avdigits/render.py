"""Draw the picture track: one MNIST digit moving over a background.

What varies is what varies in real footage of a written digit: frame size and shape, background
(solid, gradient, texture), ink colour, the digit's size, angle and position, its drift during
the clip, and sensor noise. The digit always stays inside the central square of the frame, since
the shared preprocessing (`decode_media`) centre-crops to a square: the label must survive it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FRAME_SIZES", "render_frames"]

# (width, height); all even (yuv420p), square and 4:3.
FRAME_SIZES = ((128, 128), (160, 160), (192, 192), (224, 224),
               (160, 120), (192, 144), (224, 168), (256, 192))

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """(H, W, 3) float32 in [0, 1] and its kind."""
    kind = str(rng.choice(["solid", "gradient", "texture"]))
    base = rng.uniform(0, 1, 3).astype(np.float32)
    if kind == "solid":
        return np.broadcast_to(base, (height, width, 3)).copy(), kind
    if kind == "gradient":
        other = rng.uniform(0, 1, 3).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        t = x * np.cos(angle) + y * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return base * (1 - t[..., None]) + other * t[..., None], kind
    # texture: smooth coloured blotches (low-resolution noise, upsampled) over a base colour
    cells = int(rng.integers(3, 12))
    coarse = rng.normal(0, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
    ys = np.linspace(0, cells, height, dtype=np.float32)
    xs = np.linspace(0, cells, width, dtype=np.float32)
    field = _bilinear(coarse, ys[:, None].repeat(width, 1), xs[None, :].repeat(height, 0))
    fine = rng.normal(0, 1, (height, width, 1)).astype(np.float32)
    amplitude = rng.uniform(0.05, 0.2)
    return np.clip(base + amplitude * field + 0.03 * fine, 0, 1), kind


def _bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray, padded: bool = False,
              ) -> np.ndarray:
    """Sample `image` (h, w[, c]) at float coordinates; zero outside.

    `padded`: the image already has a one-pixel zero border (saves a copy per call).
    """
    padded = image if padded else np.pad(image, [(1, 1), (1, 1)] + [(0, 0)] * (image.ndim - 2))
    y = np.clip(y + 1, 0, padded.shape[0] - 1.001)
    x = np.clip(x + 1, 0, padded.shape[1] - 1.001)
    y0, x0 = np.floor(y).astype(np.int32), np.floor(x).astype(np.int32)
    fy, fx = y - y0, x - x0
    if image.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = padded[y0, x0] * (1 - fx) + padded[y0, x0 + 1] * fx
    bottom = padded[y0 + 1, x0] * (1 - fx) + padded[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _ink(rng: np.random.Generator, background_luma: float) -> np.ndarray:
    """An ink colour whose luminance is far from the background's, any hue."""
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    luma = float(colour @ _LUMA)
    if background_luma < 0.5:  # light ink: blend towards white until bright enough
        target = rng.uniform(min(background_luma + 0.45, 0.95), 1.0)
        if target > luma:
            colour = colour + (1 - colour) * (target - luma) / max(1 - luma, 1e-6)
        return colour
    target = rng.uniform(0.0, max(background_luma - 0.45, 0.05))  # dark ink: scale down
    return colour * target / max(luma, 1e-6) if target < luma else colour


def render_frames(digit: np.ndarray, n_frames: int, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, dict]:
    """(T, H, W, 3) uint8 frames showing `digit` (28, 28) uint8, and what was drawn."""
    width, height = FRAME_SIZES[int(rng.integers(len(FRAME_SIZES)))]
    side = min(width, height)  # the square that decode_media keeps
    background, bg_kind = _background(rng, height, width)
    ink = _ink(rng, float(background.mean(axis=(0, 1)) @ _LUMA))

    # Digit box (28 px of MNIST, ~20 px of ink) size, angle and centre at the start and the end.
    size0 = rng.uniform(0.45, 0.9) * side
    size1 = size0 * rng.uniform(0.85, 1.15)
    angle0 = rng.uniform(-15, 15)
    angle1 = angle0 + rng.uniform(-10, 10)
    # Keep all ink inside the square at any angle: the farthest ink pixel from the rotation
    # centre (MNIST centres by mass, not by box, so ink can reach further on one side).
    ys, xs = np.nonzero(digit > 25)
    reach_px = float(np.hypot(ys + 0.5 - 14, xs + 0.5 - 14).max()) + 1.0 if ys.size else 14.0
    ink_half = reach_px / 28 * max(size0, size1)
    slack = max(side / 2 - ink_half, 0.0)
    centre0 = rng.uniform(-slack, slack, 2)
    centre1 = centre0 + rng.uniform(-0.5, 0.5, 2) * slack
    centre1 = np.clip(centre1, -slack, slack)

    background_u8 = np.clip(background * 255 + 0.5, 0, 255).astype(np.uint8)
    alpha_source = np.pad(digit.astype(np.float32) / 255.0, 1)
    noise_sigma = rng.uniform(0.0, 8.0) if rng.uniform() < 0.5 else 0.0  # in 8-bit levels
    noise_bank = (rng.standard_normal((2, height, width, 3), dtype=np.float32) * noise_sigma
                  if noise_sigma > 0 else None)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for index in range(n_frames):
        t = index / max(n_frames - 1, 1)
        size = size0 + (size1 - size0) * t
        angle = np.deg2rad(angle0 + (angle1 - angle0) * t)
        cy = height / 2 + centre0[0] + (centre1[0] - centre0[0]) * t
        cx = width / 2 + centre0[1] + (centre1[1] - centre0[1]) * t
        # Only the rotated digit box needs sampling; the rest of the frame is background.
        reach = 0.5 * np.sqrt(2) * size + 1
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        # Inverse map: output pixel -> MNIST coordinates (rotation about the digit's centre).
        scale = 28.0 / size
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        u = cos * dx + sin * dy + 13.5
        v = -sin * dx + cos * dy + 13.5
        alpha = _bilinear(alpha_source, v, u, padded=True)[..., None]
        frame = background[y0:y1, x0:x1] * (1 - alpha) + ink * alpha
        if noise_bank is not None:
            shift = rng.integers(0, [height, width])
            noise = np.roll(noise_bank[index % 2], shift, axis=(0, 1))
            full = background_u8 + noise
            full[y0:y1, x0:x1] = frame * 255 + noise[y0:y1, x0:x1]
            frames[index] = np.clip(full + 0.5, 0, 255)
        else:
            frames[index] = background_u8
            frames[index, y0:y1, x0:x1] = np.clip(frame * 255 + 0.5, 0, 255)
    info = {
        "width": width, "height": height, "background": bg_kind,
        "digit_size_px": round(float(size0), 1), "motion_px": round(float(
            np.hypot(*(centre1 - centre0))), 1),
        "rotation_deg": round(float(angle0), 1),
        "pixel_noise": round(float(noise_sigma), 2),
    }
    return frames, info
