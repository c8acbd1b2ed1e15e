"""Deterministic procedural RGB segmentation scenes (the pipeline's default dataset).

Design
------
Each scene is rendered with the painter's algorithm on a float canvas:

1. **Background**: a smooth two-colour gradient along a random direction, plus
   low- and mid-frequency noise (coarse random grids, bilinearly upsampled),
   plus a few soft Gaussian colour blobs, plus fine per-pixel grain (texture).  Some blobs
   take a jittered copy of one of the scene's object colours, so the background regularly contains colours
   that also occur on objects.
2. **Objects**: 4-8 instances (at least 4 distinct classes, extras favour the
   thin classes) drawn in random order, later ones occluding earlier ones.  Each
   instance gets a colour drawn *independently of its class* (uniform in RGB, or
   for ~10 % of instances a low-contrast colour close to what lies beneath it)
   and a mild linear shading ramp.  The class is therefore carried only by
   shape: filled ``disc``, rotated ``square`` and ``triangle``, and thin ``ring``
   (annulus ~2-3 px thick) and ``line`` (segment ~2-3 px wide).  Shapes are
   hard-edged (no anti-aliasing), and image and mask are painted with the same
   boolean footprint, so the mask is exactly what is visible (last painter
   wins).  A scene with fewer than two visible object classes is re-drawn.
3. **Photometric jitter**: per-image contrast, brightness and a small per-channel
   colour cast, then Gaussian pixel noise over the whole image (objects included).

Object sizes scale with ``sqrt(height * width)`` (so coverage does not depend on
the aspect ratio); the thin structures keep an absolute thickness of 2-3 px so
coarse decoders visibly lose them.  Everything is
vectorised numpy over the pixel grid and all randomness comes from the given
``numpy.random.Generator``, so equal seeds give identical arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["CLASS_NAMES", "render_scene"]

CLASS_NAMES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "line")

_DISC, _SQUARE, _TRIANGLE, _RING, _LINE = 1, 2, 3, 4, 5
_NUM_OBJECT_CLASSES = len(CLASS_NAMES) - 1
# Extra instances (beyond one of each class) favour the thin classes a little,
# because they cover far fewer pixels per instance.
_EXTRA_CLASS_P = np.array([0.12, 0.12, 0.12, 0.3, 0.34])
_MIN_INSTANCES, _MAX_INSTANCES = 4, 8
_MIN_SIZE = 16
# Probability that an instance is low-contrast (coloured like what lies beneath it).
_CAMOUFLAGE_P = 0.1


class _Scene(NamedTuple):
    """Full render result; ``shapes[k]`` is the (unoccluded) footprint of instance ``k``."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W]
    classes: list[int]  # class id of each instance, in paint order
    shapes: list[np.ndarray]  # bool [H, W] footprint of each instance, in paint order


class _Grid(NamedTuple):
    yy: np.ndarray  # float32 [H, 1] pixel-centre row coordinate
    xx: np.ndarray  # float32 [1, W] pixel-centre column coordinate
    height: int
    width: int
    scale: float  # sqrt(height * width): object sizes scale with it


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8 [H, W, 3], mask uint8 [H, W] with values in 0..len(CLASS_NAMES)-1)."""
    scene = _render_scene(rng, height, width)
    return scene.image, scene.mask


def _render_scene(rng: np.random.Generator, height: int, width: int) -> _Scene:
    """Render one scene and also return the per-instance classes and footprints.

    Re-draws (from the same ``rng``, so still deterministic) in the rare case that
    occlusion leaves fewer than two object classes visible.
    """
    height, width = int(height), int(width)
    if height < _MIN_SIZE or width < _MIN_SIZE:
        raise ValueError(f"scene must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {height}x{width}")
    grid = _Grid(
        yy=(np.arange(height, dtype=np.float32) + 0.5)[:, None],
        xx=(np.arange(width, dtype=np.float32) + 0.5)[None, :],
        height=height,
        width=width,
        scale=float(np.sqrt(height * width)),
    )
    while True:
        scene = _draw(rng, grid)
        if np.count_nonzero(np.bincount(scene.mask.ravel(), minlength=len(CLASS_NAMES))[1:]) >= 2:
            return scene


def _draw(rng: np.random.Generator, grid: _Grid) -> _Scene:
    """One painter's-algorithm pass: background, instances in order, photometric jitter."""
    classes = _sample_classes(rng)
    colours = rng.uniform(0.0, 255.0, size=(len(classes), 3)).astype(np.float32)

    canvas = _background(rng, grid, colours)
    mask = np.zeros((grid.height, grid.width), dtype=np.uint8)
    shapes: list[np.ndarray] = []
    for cls, colour in zip(classes, colours, strict=True):
        shape = _SHAPE_FNS[cls](rng, grid)
        shade = _shading(rng, grid)
        if rng.random() < _CAMOUFLAGE_P and shape.any():
            # Low-contrast instance: a colour near what lies underneath it.
            colour = _near_colour(rng, canvas[shape].mean(axis=0))
        canvas[shape] = colour + shade[shape][:, None]
        mask[shape] = cls
        shapes.append(shape)

    image = _photometric(rng, canvas)
    return _Scene(image=image, mask=mask, classes=classes, shapes=shapes)


def _near_colour(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A colour at RGB distance ~25-45 from ``colour`` (kept inside 0..255)."""
    direction = rng.normal(size=3)
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    return np.clip(colour + rng.uniform(25.0, 45.0) * direction, 0.0, 255.0).astype(np.float32)


def _sample_classes(rng: np.random.Generator) -> list[int]:
    """Class ids in paint order: 4-8 instances, >=4 distinct classes, extras weighted to thin ones."""
    n = int(rng.integers(_MIN_INSTANCES, _MAX_INSTANCES + 1))
    distinct = rng.permutation(_NUM_OBJECT_CLASSES)[: min(n, _NUM_OBJECT_CLASSES)] + 1
    extra = rng.choice(_NUM_OBJECT_CLASSES, size=max(0, n - _NUM_OBJECT_CLASSES), p=_EXTRA_CLASS_P) + 1
    order = np.concatenate([distinct, extra])
    rng.shuffle(order)
    return [int(c) for c in order]


# --------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, grid: _Grid, object_colours: np.ndarray) -> np.ndarray:
    """Gradient + low/mid-frequency noise + soft blobs (some in object colours); float32 [H, W, 3]."""
    h, w, s = grid.height, grid.width, grid.scale
    c0, c1 = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    proj = float(np.cos(angle)) * grid.xx + float(np.sin(angle)) * grid.yy  # [H, W] by broadcasting
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    canvas = c0 + (c1 - c0) * t[..., None]

    # Low-frequency noise (coarse random grid, bilinearly upsampled) plus a weaker
    # mid-frequency layer for some texture.
    for cells, amplitude in (((3, 7), rng.uniform(10.0, 30.0)), ((8, 17), rng.uniform(4.0, 12.0))):
        gh, gw = int(rng.integers(*cells)), int(rng.integers(*cells))
        coarse = rng.normal(0.0, amplitude, size=(gh, gw, 3)).astype(np.float32)
        canvas += _bilinear_upsample(coarse, h, w)

    # Soft blobs; about half reuse a (jittered) object colour.
    for _ in range(int(rng.integers(2, 6))):
        if rng.random() < 0.5:
            colour = object_colours[rng.integers(len(object_colours))] + rng.normal(0.0, 8.0, size=3)
        else:
            colour = rng.uniform(0.0, 255.0, size=3)
        cy, cx = rng.uniform(0.0, h), rng.uniform(0.0, w)
        sigma = rng.uniform(0.06, 0.2) * s
        inv = np.float32(-0.5 / (sigma * sigma))
        # Separable Gaussian: outer product of a column and a row profile.
        peak = np.float32(rng.uniform(0.4, 0.9))
        alpha = peak * np.exp(inv * (grid.yy - cy) ** 2) * np.exp(inv * (grid.xx - cx) ** 2)
        canvas += alpha[..., None] * (colour.astype(np.float32) - canvas)

    # Fine grain texture (mostly luminance, some chroma): the background is textured,
    # objects are smooth, so "object or not" has a local cue while the class needs shape.
    grain = rng.uniform(10.0, 22.0)
    luminance = rng.standard_normal(size=(h, w, 1), dtype=np.float32)
    chroma = rng.standard_normal(size=(h, w, 3), dtype=np.float32)
    canvas += np.float32(grain) * (0.8 * luminance + 0.45 * chroma)
    return canvas


def _bilinear_upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize ``coarse`` [gh, gw, C] to [height, width, C] (corner-aligned).

    Separable: two small interpolation matrices applied with matrix products.
    """
    wy = _interp_matrix(coarse.shape[0], height)  # [H, gh]
    wx = _interp_matrix(coarse.shape[1], width)  # [W, gw]
    rows = np.einsum("ijc,wj->iwc", coarse, wx)  # [gh, W, C]
    return np.tensordot(wy, rows, axes=1)  # [H, W, C]


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights mapping n_in samples onto n_out (corner-aligned)."""
    pos = np.linspace(0.0, n_in - 1, n_out, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    frac = pos - lo
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    weights[rows, lo] = 1.0 - frac
    weights[rows, lo + 1] = frac
    return weights


# --------------------------------------------------------------------------- shapes


def _centre(rng: np.random.Generator, grid: _Grid) -> tuple[float, float]:
    """Random instance centre, kept away from the border so most of the object is visible."""
    return rng.uniform(0.1, 0.9) * grid.height, rng.uniform(0.1, 0.9) * grid.width


def _disc(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    cy, cx = _centre(rng, grid)
    r = max(3.0, rng.uniform(0.13, 0.31) * grid.scale)
    return (grid.yy - cy) ** 2 + (grid.xx - cx) ** 2 <= r * r


def _square(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    cy, cx = _centre(rng, grid)
    half = max(3.0, rng.uniform(0.1, 0.25) * grid.scale)
    angle = rng.uniform(0.0, 0.5 * np.pi)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dy, dx = grid.yy - cy, grid.xx - cx
    return (np.abs(c * dx + s * dy) <= half) & (np.abs(c * dy - s * dx) <= half)


def _triangle(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    cy, cx = _centre(rng, grid)
    radius = max(4.0, rng.uniform(0.2, 0.4) * grid.scale)
    angles = rng.uniform(0.0, 2.0 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    angles = angles + rng.uniform(-0.3, 0.3, size=3)
    radii = radius * rng.uniform(0.8, 1.1, size=3)
    vy = (cy + radii * np.sin(angles)).tolist()
    vx = (cx + radii * np.cos(angles)).tolist()
    # Vertices are in increasing angle order, so all edge functions share one sign inside.
    inside = np.ones((grid.height, grid.width), dtype=bool)
    for i in range(3):
        j = (i + 1) % 3
        edge = (vx[j] - vx[i]) * (grid.yy - vy[i]) - (vy[j] - vy[i]) * (grid.xx - vx[i])
        inside &= edge >= 0
    return inside


def _ring(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    cy, cx = _centre(rng, grid)
    r = max(5.0, rng.uniform(0.1, 0.3) * grid.scale)
    half_thickness = rng.uniform(1.0, 1.5)  # 2-3 px thick annulus
    dist = np.sqrt((grid.yy - cy) ** 2 + (grid.xx - cx) ** 2)
    return np.abs(dist - r) <= half_thickness


def _line(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    cy, cx = _centre(rng, grid)
    length = rng.uniform(0.6, 1.2) * grid.scale
    angle = rng.uniform(0.0, np.pi)
    half_width = rng.uniform(1.0, 1.5)  # 2-3 px wide segment
    uy, ux = np.float32(np.sin(angle)), np.float32(np.cos(angle))
    dy, dx = grid.yy - cy, grid.xx - cx
    along = np.clip(ux * dx + uy * dy, -0.5 * length, 0.5 * length)
    # Distance from the pixel centre to the segment.
    return (dx - along * ux) ** 2 + (dy - along * uy) ** 2 <= half_width * half_width


_SHAPE_FNS = {_DISC: _disc, _SQUARE: _square, _TRIANGLE: _triangle, _RING: _ring, _LINE: _line}


def _shading(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """A mild linear brightness ramp (+-~25 levels across the image) for one instance."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    amp = rng.uniform(-25.0, 25.0) / grid.scale
    dx, dy = grid.xx - 0.5 * grid.width, grid.yy - 0.5 * grid.height
    ramp = float(np.cos(angle)) * dx + float(np.sin(angle)) * dy
    return amp * ramp


# --------------------------------------------------------------------------- photometric


def _photometric(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Contrast/brightness/colour-cast jitter plus Gaussian pixel noise; returns uint8."""
    contrast = rng.uniform(0.75, 1.25)
    brightness = rng.uniform(-25.0, 25.0)
    cast = rng.normal(0.0, 6.0, size=3).astype(np.float32)
    sigma = rng.uniform(1.5, 4.0)
    out = (canvas - 128.0) * np.float32(contrast) + np.float32(128.0 + brightness) + cast
    out += np.float32(sigma) * rng.standard_normal(size=canvas.shape, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
