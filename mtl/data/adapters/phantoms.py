"""Procedural brain-MRI phantoms: SYNTHETIC data for demos and tests, NOT a medical dataset.

Nothing here comes from a patient or a scanner. Each slice is drawn from a handful of random
numbers so that ``mtl train`` and the test suite run with no download. The images only imitate
the rough look of an axial T1 post-contrast slice, and the three "tumor types" only imitate the
textbook picture of each type, so that a small CNN can learn to tell them apart:

* ``glioma``: inside the brain, away from the midline, with a lobulated outline. It has a bright
  enhancing rim around a dark necrotic core and a faint dark edema halo. The halo is not part
  of the mask.
* ``meningioma``: outside the brain. It is a homogeneously bright, sharp-edged mass based on
  the inner skull table, pressing into the brain, with a thin dark CSF cleft around it.
* ``pituitary``: a small, homogeneously bright, roundish mass on the midline in the lower
  central part of the head (the "sellar region").

Do not use these images to judge a model's medical performance.

Every sample is a pure function of ``(seed, index, size)``. Labels come from
``np.random.default_rng([seed, index, 0])``, anatomy from ``[seed, index, 1]`` and the tumor from
``[seed, index, 2]``. So ``records()`` stays cheap, ``load()`` gives the same pixels every time,
and ``render_phantom(seed, index, size, kind)`` draws the same head for every ``kind``. The
global numpy RNG is never touched. All scalar parameters and low-resolution noise grids are
drawn before any per-pixel noise, so one ``(seed, index)`` shows the same anatomy at every
``size``.

Coordinates: the image spans ``[-1, 1]`` on both axes, x to the right (columns) and y downwards
(rows). Each head has its own frame ``(X, Y)``, shifted and rotated with the head. Its midline is
``X = 0``, and ``Y > 0`` is the lower part of the displayed slice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.data.sample import NO_TUMOR, Sample
from mtl.files import atomic_write

KINDS = ("glioma", "meningioma", "pituitary")
FOV_MM = 240.0  # simulated field of view; pixel spacing is FOV_MM / size
MIN_SIZE = 32

_NOISE_GRID = 32  # low-res grid for texture noise, upsampled to the image size


# --------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phantom:
    """One rendered slice with its ground truth.

    ``image`` is float32 in [0, 1]. ``mask`` is uint8 {0, 1} and marks the tumor (enhancing
    part and core, no edema). ``head`` and ``brain`` are boolean region masks, kept for tests
    and debugging.
    """

    image: np.ndarray
    mask: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    kind: str


def phantom_label(seed: int, index: int, tumor_fraction: float = 0.75,
                  classes: tuple[str, ...] = KINDS) -> str:
    """The label of phantom ``index``: one of ``classes`` or ``"no_tumor"``. It is cheap and
    deterministic."""
    rng = np.random.default_rng([seed, index, 0])
    has_tumor = rng.random() < tumor_fraction
    kind = classes[int(rng.integers(len(classes)))]  # always drawn, so streams stay aligned
    return kind if has_tumor else NO_TUMOR


def render_phantom(seed: int, index: int, size: int = 128, kind: str = NO_TUMOR) -> Phantom:
    """Render phantom ``(seed, index)`` at ``size`` x ``size`` with a tumor of ``kind``.

    ``kind`` is one of :data:`KINDS` or ``"no_tumor"``. The result depends only on the arguments.
    """
    if kind != NO_TUMOR and kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; known: {', '.join(KINDS)}, {NO_TUMOR}")
    if size < MIN_SIZE:
        raise ValueError(f"phantom size must be >= {MIN_SIZE}, got {size}")
    rng = np.random.default_rng([seed, index, 1])
    tumor_rng = np.random.default_rng([seed, index, 2])
    return _render(rng, tumor_rng, int(size), kind)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: x as a (1, S) row and y as an (S, 1) column."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    c.setflags(write=False)
    return c[None, :], c[:, None]


def _noise_grid(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A smooth, unit-variance random field on the low-res grid (size independent)."""
    z = ndimage.gaussian_filter(rng.standard_normal((_NOISE_GRID, _NOISE_GRID)), sigma, mode="wrap")
    return (z / (z.std() + 1e-8)).astype(np.float32)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize a square low-res grid to (size, size)."""
    out = ndimage.zoom(grid, size / grid.shape[0], order=1, prefilter=False, grid_mode=True,
                       mode="grid-wrap")
    return out[:size, :size]  # zoom rounds the shape; guard against an off-by-one


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _harmonics(rng: np.random.Generator, ks: tuple[int, ...], amp: tuple[float, float]):
    """Random angular harmonics: a list of (k, amplitude, phase), used for wobbly outlines."""
    return [(k, rng.uniform(*amp), rng.uniform(0, 2 * math.pi)) for k in ks]


def _wobble(theta: np.ndarray | float, harmonics) -> np.ndarray | float:
    out = 0.0
    for k, a, p in harmonics:
        out = out + a * np.cos(k * theta + p)
    return out


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------


def _render(rng: np.random.Generator, tumor_rng: np.random.Generator, size: int,
            kind: str) -> Phantom:
    u = rng.uniform
    f32 = np.float32

    # ---- 1. scalar parameters (all drawn before any per-pixel noise) ------------------------
    # Head ellipse in the image frame.
    cx, cy = u(-0.04, 0.04), u(-0.04, 0.04)
    rot = math.radians(u(-12, 12))
    A, B = u(0.66, 0.78), u(0.80, 0.90)  # semi-axes: X (left-right) and Y (up-down)
    egg = u(0.0, 0.08)  # the head is a bit wider in its lower half
    head_harm = _harmonics(rng, (3, 4, 5), (0.0, 0.006))
    # Radial layers, as fractions of the head radius: scalp and skull (bright ring), then
    # dark CSF/bone gap, then brain.
    ring_t = u(0.07, 0.10)
    gap_t = u(0.025, 0.045)
    rho_in0 = 1.0 - ring_t  # inner skull table
    rho_b0 = rho_in0 - gap_t  # brain surface (mean)
    brain_harm = _harmonics(rng, (4, 6, 9, 13), (0.0, 0.008))
    bone_pos, scalp_val, marrow_val = u(0.35, 0.65), u(0.75, 0.92), u(0.5, 0.7)
    # Tissue contrast (T1-like: white matter > grey matter > CSF).
    gm_val = u(0.34, 0.44)
    wm_val = gm_val + u(0.10, 0.20)
    csf_val = u(0.04, 0.14)
    wm_bias, tex_amp = u(-0.15, 0.15), u(0.015, 0.035)
    # Lateral ventricles: one ellipse mirrored across the midline (butterfly shape).
    v_dark = rng.random() < 0.85  # mostly dark CSF, sometimes bright (T2-like look)
    v_val = csf_val if v_dark else u(0.75, 0.9)
    v_a, v_b = u(0.03, 0.06), u(0.12, 0.21)
    v_tilt, v_bend = math.radians(u(12, 30)), u(0.5, 2.0)
    # Centre each wing far enough from the midline to leave a thin septum between them.
    v_x = math.hypot(v_a * math.cos(v_tilt), v_b * math.sin(v_tilt)) + u(0.008, 0.02)
    v_y = u(-0.16, -0.04)
    falx_w = u(0.006, 0.012)
    # Imaging: multiplicative bias field, Rician noise, blur, gamma.
    bias = (u(-0.15, 0.15), u(-0.15, 0.15), u(-0.1, 0.1), u(-0.1, 0.1), u(-0.1, 0.1))
    noise_sigma = u(0.01, 0.045)
    gamma = u(0.85, 1.15)

    # The tumor draws from its own stream (passed in), so the anatomy does not depend on kind.
    tumor = _tumor_params(tumor_rng, kind, A, B, egg, rho_in0, rho_b0, brain_harm)

    # Low-res noise grids. They are size independent and drawn last among the scalar draws.
    wm_grid = _noise_grid(rng, 1.6)  # white-matter layout
    sulci_grid = _noise_grid(rng, 1.1)  # sulcal pattern near the cortex
    tex_grid = _noise_grid(rng, 0.6)  # mid-scale tissue texture
    tumor_grid = _noise_grid(rng, 0.8)  # tumor texture

    # ---- 2. geometry in the head frame ----------------------------------------------------
    x, y = _axes(size)
    dx, dy = x - f32(cx), y - f32(cy)
    c, s = f32(math.cos(rot)), f32(math.sin(rot))
    X = dx * c + dy * s  # (S, S)
    Y = dy * c - dx * s
    Ae = f32(A) * (1.0 + f32(egg) * (Y / f32(B)))  # egg-shaped X semi-axis
    Xn, Yn = X / Ae, Y / f32(B)
    rho = np.sqrt(Xn * Xn + Yn * Yn)  # 1 on the outer head contour
    theta = np.arctan2(Yn, Xn)

    rho_head = 1.0 + _wobble(theta, head_harm)
    brain_r = rho_b0 * (1.0 + _wobble(theta, brain_harm))  # brain surface, per angle
    inner_r = brain_r + f32(gap_t)  # inner skull table
    head = rho < rho_head
    inside_skull = rho < inner_r
    brain = rho < brain_r
    depth = 1.0 - rho / brain_r  # 0 at the brain surface, 1 at the centre

    # ---- 3. anatomy -------------------------------------------------------------------------
    wm_n = _upsample(wm_grid, size)
    sulci_n = _upsample(sulci_grid, size)
    tex_n = _upsample(tex_grid, size)

    # Scalp and skull ring: bright fat outside, marrow inside, a dark cortical bone line between.
    t_ring = np.clip((rho - inner_r) / (rho_head - inner_r), 0.0, 1.0)
    ring = marrow_val + (scalp_val - marrow_val) * _smoothstep(t_ring, bone_pos, bone_pos + 0.25)
    ring = ring * (1.0 - 0.75 * np.exp(-(((t_ring - bone_pos) / 0.12) ** 2)))

    # Brain: deep white matter with a grey cortical ribbon and CSF-filled sulci near the surface.
    wm = 1.0 / (1.0 + np.exp(-(wm_n * 0.6 + 3.0 * (depth - 0.25) + wm_bias) / 0.12))
    wm = wm * _smoothstep(depth, 0.04, 0.14)
    tissue = gm_val + (wm_val - gm_val) * wm
    sulci = np.exp(-((sulci_n / 0.12) ** 2)) * (1.0 - _smoothstep(depth, 0.05, 0.22))
    tissue = tissue + (csf_val - tissue) * (0.8 * sulci)
    tissue = tissue + f32(tex_amp) * tex_n

    # Interhemispheric fissure (falx): a thin dark line on the midline near the front and back.
    falx = np.exp(-((X / f32(falx_w)) ** 2)) * (1.0 - _smoothstep(depth, 0.15, 0.45))
    tissue = tissue + (csf_val - tissue) * falx

    # Lateral ventricles: mirror |X| so one tilted, bent ellipse draws both sides symmetrically.
    vx, vy = np.abs(X) - f32(v_x), Y - f32(v_y)
    vc, vs = f32(math.cos(v_tilt)), f32(math.sin(v_tilt))
    vu = vx * vc + vy * vs  # tilt so the upper (frontal) horns spread outward
    vv = vy * vc - vx * vs
    vu = vu - f32(v_bend) * vv * vv  # bend into a crescent, concave towards the midline
    vent = ((vu / f32(v_a)) ** 2 + (vv / f32(v_b)) ** 2) < 1.0
    tissue = np.where(vent, f32(v_val), tissue)

    img = np.where(brain, tissue, np.where(inside_skull, f32(csf_val), ring))
    img = np.where(head, img, f32(0.0)).astype(f32)

    # ---- 4. tumor ----------------------------------------------------------------------------
    mask = np.zeros((size, size), dtype=bool)
    if tumor is not None:
        tumor_n = _upsample(tumor_grid, size)
        img, mask = _draw_tumor(tumor, img, X, Y, brain, inside_skull, tumor_n, csf_val)

    # ---- 5. imaging: bias field, blur (PSF), gamma, Rician noise -----------------------------
    b0, b1, b2, b3, b4 = (f32(v) for v in bias)
    img = img * np.exp(b0 * x + b1 * y + b2 * x * y + b3 * x * x + b4 * y * y)
    img = ndimage.gaussian_filter(img, 0.45 * size / 128.0, mode="constant")
    img = np.clip(img, 0.0, None) ** f32(gamma)
    n1 = rng.standard_normal((size, size), dtype=f32)
    n2 = rng.standard_normal((size, size), dtype=f32)
    sig = f32(noise_sigma)
    img = np.sqrt((img + sig * n1) ** 2 + (sig * n2) ** 2)  # Rician: magnitude of complex noise
    img = np.clip(img, 0.0, 1.0).astype(f32)

    return Phantom(image=img, mask=mask.astype(np.uint8), head=head, brain=brain, kind=kind)


# --------------------------------------------------------------------------------------------
# Tumors
# --------------------------------------------------------------------------------------------


def _head_point(rho: float, psi: float, A: float, B: float, egg: float) -> tuple[float, float]:
    """Head-frame (X, Y) of the point at normalised radius ``rho`` and polar angle ``psi``."""
    Y = rho * B * math.sin(psi)
    return rho * A * (1.0 + egg * Y / B) * math.cos(psi), Y


def _tumor_params(rng, kind, A, B, egg, rho_in0, rho_b0, brain_harm) -> dict[str, Any] | None:
    """Draw a tumor's scalar parameters (head-frame units). Returns None for no_tumor."""
    u = rng.uniform
    if kind == NO_TUMOR:
        return None
    if kind == "glioma":
        side = 1.0 if rng.random() < 0.5 else -1.0
        aspect, ang = u(0.75, 1.25), u(0, math.pi)
        harm = _harmonics(rng, (2, 3, 4, 5), (0.03, 0.12))
        # Largest head-frame radius of the lobulated, stretched outline, per unit of R.
        lobe = 1.0 + float(np.max(_wobble(np.linspace(0, 2 * math.pi, 90), harm)))
        extent = lobe * max(aspect, 1.0 / aspect)
        # Place the centre so the whole lesion stays inside one hemisphere: clear of the brain
        # surface and of the midline. The checks are on scalars, not pixels. If the lesion does
        # not fit, shrink it and retry.
        R = u(0.11, 0.26)
        X0, Y0 = side * 0.3, -0.1  # fallback; the loop practically always succeeds
        for _ in range(60):
            Rmax = R * extent
            # The ellipse with its semi-axes shortened by d lies inside the ellipse's inner
            # parallel curve at distance d. The 0.96 factor covers the wobble of the brain
            # surface. The egg factor is taken at its narrow end.
            reach_x = A * (1.0 - egg) * rho_b0 * 0.96 - Rmax - 0.02
            reach_y = B * rho_b0 * 0.96 - Rmax - 0.02
            lo = Rmax + 0.03  # distance from the midline
            if reach_x > lo + 0.01 and reach_y > 0.05:
                x_try, y_try = side * u(lo, reach_x), u(-0.8, 0.6) * reach_y
                if (x_try / reach_x) ** 2 + (y_try / reach_y) ** 2 <= 1.0:
                    X0, Y0 = x_try, y_try
                    break
            R *= 0.95
        return dict(
            kind=kind, X0=X0, Y0=Y0, R=R, aspect=aspect, ang=ang, harm=harm,
            rim_t=u(0.28, 0.45), rim_harm=_harmonics(rng, (2, 3), (0.05, 0.2)),
            rim_val=u(0.85, 1.0), core_val=u(0.12, 0.28),
            edema_t=u(0.45, 0.9), edema_amp=u(0.25, 0.6),
        )
    if kind == "meningioma":
        # Angle on the convexity: anywhere but the lower part, which is the sellar region.
        psi = u(-math.pi - 0.6, 0.6)
        R = u(0.12, 0.24)
        r_in = rho_in0 * (1.0 + _wobble(psi, brain_harm) * rho_b0 / rho_in0)
        px, py = _head_point(r_in, psi, A, B, egg)
        norm = math.hypot(px, py)
        k = u(0.15, 0.5)  # how far the centre sits inside the skull, in radii
        return dict(
            kind=kind, X0=px - k * R * px / norm, Y0=py - k * R * py / norm, R=R,
            aspect=u(0.85, 1.15), ang=u(0, math.pi), val=u(0.82, 0.97), cleft=u(0.06, 0.14),
        )
    # pituitary: small, on the midline, below the ventricles.
    rx = u(0.09, 0.12)
    return dict(
        kind=kind, X0=u(-0.01, 0.01), Y0=B * rho_b0 * u(0.36, 0.5), rx=rx, ry=rx * u(0.78, 1.0),
        val=u(0.85, 1.0),
    )


def _draw_tumor(t, img, X, Y, brain, inside_skull, tex, csf_val):
    """Paint tumor ``t`` into ``img``. Returns (image, boolean mask)."""
    f32 = np.float32
    dX, dY = X - f32(t["X0"]), Y - f32(t["Y0"])
    kind = t["kind"]

    if kind == "pituitary":
        r = np.sqrt((dX / f32(t["rx"])) ** 2 + (dY / f32(t["ry"])) ** 2)
        mask = (r < 1.0) & brain
        img = np.where(mask, f32(t["val"]) + f32(0.02) * tex, img)
        return img, mask

    # Rotated, stretched local frame (glioma and meningioma).
    c, s = f32(math.cos(t["ang"])), f32(math.sin(t["ang"]))
    lu = (dX * c + dY * s) / f32(t["aspect"])
    lv = (dY * c - dX * s) * f32(t["aspect"])
    dist = np.sqrt(lu * lu + lv * lv)

    if kind == "meningioma":
        r = dist / f32(t["R"])
        mask = (r < 1.0) & inside_skull  # flat base on the inner skull table
        # Thin CSF cleft between the mass and the brain it pushes aside (extra-axial sign).
        cleft = (r >= 1.0) & (r < 1.0 + f32(t["cleft"])) & brain
        img = np.where(cleft, f32(csf_val), img)
        img = np.where(mask, f32(t["val"]) + f32(0.02) * tex, img)
        return img, mask

    # Glioma: a lobulated outline r(phi) = R * (1 + sum of harmonics).
    phi = np.arctan2(lv, lu)
    r = dist / (f32(t["R"]) * (1.0 + _wobble(phi, t["harm"])))
    mask = (r < 1.0) & brain
    # Edema halo: faint, darker brain around the lesion, fading outward. Not in the mask.
    edema = (1.0 - _smoothstep(r, 1.0, 1.0 + t["edema_t"])) * brain
    img = img * (1.0 - f32(t["edema_amp"]) * edema)
    # Ring enhancement: bright rim of uneven thickness around a dark, textured necrotic core.
    core_r = 1.0 - f32(t["rim_t"]) * (1.0 + _wobble(phi, t["rim_harm"]))
    core = r < core_r
    rim_val = f32(t["rim_val"]) + f32(0.04) * tex
    core_val = f32(t["core_val"]) + f32(0.05) * tex
    img = np.where(mask, np.where(core, core_val, rim_val), img)
    return img, mask


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


class PhantomAdapter(Adapter):
    """Synthetic phantoms (see module docstring). ``root`` is ignored; nothing is read from disk."""

    name: ClassVar[str] = "phantoms"
    summary: ClassVar[str] = (
        "synthetic brain-like MRI phantoms (glioma/meningioma/pituitary/no_tumor), "
        "for demos and tests, not medical data"
    )

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        n: int = 200,
        size: int = 128,
        seed: int = 0,
        tumor_fraction: float = 0.75,
        classes: tuple[str, ...] | list[str] = KINDS,
        on_error: str = "raise",
        **options: Any,
    ) -> None:
        super().__init__(root if root is not None else "<phantoms>", on_error=on_error, **options)
        classes = tuple(classes)
        if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(KINDS):
            raise ValueError(f"phantom classes must be distinct names from {KINDS}, got {classes}")
        if int(n) < 1:
            raise ValueError(f"phantoms: n must be >= 1, got {n}")
        if int(size) < MIN_SIZE:
            raise ValueError(f"phantoms: size must be >= {MIN_SIZE}, got {size}")
        if int(seed) < 0:
            raise ValueError(f"phantoms: seed must be >= 0, got {seed}")
        if not 0.0 <= float(tumor_fraction) <= 1.0:
            raise ValueError(f"phantoms: tumor_fraction must be in [0, 1], got {tumor_fraction}")
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self.tumor_fraction = float(tumor_fraction)
        self.classes = classes

    def records(self) -> list[Record]:
        # No folder to check: phantoms are generated, so skip the base class's root check.
        if self._records is None:
            self._records = self._scan()
        return self._records

    def _scan(self) -> list[Record]:
        out = []
        for i in range(self.n):
            label = phantom_label(self.seed, i, self.tumor_fraction, self.classes)
            case_id = f"phantom-{i:05d}"
            out.append(Record(
                case_id=case_id,
                patient_id=case_id,  # each phantom is its own patient
                presence=int(label != NO_TUMOR),
                label=label,
                has_mask=True,
                source="phantoms",
                extra={"seed": self.seed, "index": i, "size": self.size},
            ))
        return out

    def load(self, record: Record) -> Sample:
        try:
            seed, index, size = (int(record.extra[k]) for k in ("seed", "index", "size"))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"phantoms: {record.case_id}: not a phantom record ({e})") from None
        label = record.label if record.label is not None else NO_TUMOR
        if label != NO_TUMOR and label not in KINDS:
            raise DataError(f"phantoms: {record.case_id}: unknown phantom label {label!r}")
        p = render_phantom(seed, index, size, label)
        mm = FOV_MM / size
        # the slice drawn: a record without a label draws a healthy one
        drawn = dataclasses.replace(record, presence=int(label != NO_TUMOR), label=label,
                                    source="phantoms")
        return self.sample(drawn, p.image, p.mask, spacing=(mm, mm), seed=seed, index=index)


#: seed of :func:`write_example_slice`: not a seed any experiment file trains on
EXAMPLE_SEED = 2024


def write_example_slice(path: str | Path, kind: str = "meningioma", index: int = 0,
                        size: int = 256) -> Path:
    """One SYNTHETIC phantom slice as an 8-bit grey PNG, to try ``mtl infer`` on (``make demo``
    writes ``runs/demo/example_slice.png``). Its seed is none the demo trains on."""
    from PIL import Image

    image = render_phantom(EXAMPLE_SEED, index, size, kind).image
    pixels = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return atomic_write(path, lambda tmp: pixels.save(tmp, format="PNG"), force=True)


def phantom_samples(n: int, size: int = 128, seed: int = 0, **kw: Any) -> list[Sample]:
    """Generate ``n`` phantom samples. ``kw`` goes to :class:`PhantomAdapter`."""
    adapter = PhantomAdapter(n=n, size=size, seed=seed, **kw)
    return [adapter.load(r) for r in adapter.records()]


__all__ = [
    "FOV_MM", "KINDS", "Phantom", "PhantomAdapter", "phantom_label", "phantom_samples",
    "render_phantom", "write_example_slice",
]
