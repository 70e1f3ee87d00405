"""Small generated re-identification folders in the real layouts, for tests and demos without the real data.

Colo-Pair: textured blobs ("polyps") on a pinkish mucosa; the two views of a video differ by rotation,
crop and colour, frames of a view by small shifts and noise; made-up reports whose location, size and
morphology words follow the polyps, so text and image both carry the identity.
Market-1501: little figures whose shirt and trouser colours follow the identity, over 6 cameras.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from gpfuse.data.synthetic_marker import mark_generated
from gpfuse.utils.files import atomic_path

__all__ = ["polyp_scene", "random_polyp", "write_synthetic_colo_pair", "write_synthetic_market1501"]

_LOCATIONS = [
    "cecum",
    "ascending colon",
    "hepatic flexure",
    "transverse colon",
    "descending colon",
    "sigmoid colon",
    "rectum",
]
_MORPHOLOGY = ["sessile", "pedunculated", "flat", "semi-pedunculated"]
_SURFACE = ["smooth", "lobulated", "granular"]
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _patient_name(i: int) -> str:
    pair = _LETTERS[(2 * i) % 26] + _LETTERS[(2 * i + 1) % 26]
    return pair if i < 13 else _LETTERS[(i // 13 - 1) % 26] + pair


def _smooth_noise(rng: np.random.Generator, h: int, w: int, waves: int = 6) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.zeros((h, w))
    for _ in range(waves):
        fy, fx = rng.uniform(1, 5, 2)
        out += np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
    return out / waves


def random_polyp(rng: np.random.Generator, centre: tuple[float, float] = (0.4, 0.6)) -> dict:
    """Shape, texture and colour of one made-up polyp (its centre drawn in ``centre`` x image size)."""
    return {
        "center": rng.uniform(*centre, 2),
        "radius": rng.uniform(0.1, 0.25),
        "aspect": rng.uniform(0.6, 1.0),
        "angle": rng.uniform(0, np.pi),
        "freq": rng.uniform(4, 16),
        "tex_angle": rng.uniform(0, np.pi),
        "colour": rng.uniform([0.6, 0.2, 0.2], [0.95, 0.5, 0.45]),
        "morphology": _MORPHOLOGY[rng.integers(len(_MORPHOLOGY))],
    }


def polyp_scene(rng: np.random.Generator, s: int, polyp: dict) -> tuple[np.ndarray, np.ndarray]:
    """A (s, s, 3) float image in [0, 1] of one polyp on mucosa, and the polyp's soft mask (s, s) in [0, 1]."""
    y, x = np.mgrid[0:s, 0:s].astype(float)
    img = np.empty((s, s, 3))
    base = np.array([0.90, 0.58, 0.58]) + rng.normal(0, 0.03, 3)
    img[:] = base
    img += 0.06 * _smooth_noise(rng, s, s)[..., None] * np.array([1.0, 0.6, 0.6])
    cy, cx = polyp["center"] * s
    r = polyp["radius"] * s
    a = polyp["angle"]
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(a) + dy * np.sin(a)) / r
    v = (-dx * np.sin(a) + dy * np.cos(a)) / (r * polyp["aspect"])
    d = np.sqrt(u**2 + v**2)
    mask = np.clip((1.0 - d) * 6.0, 0, 1)
    if polyp["morphology"] == "pedunculated":  # a stalk below the head
        stalk = (np.abs(u) < 0.25) & (v > 0.6) & (v < 1.8)
        mask = np.maximum(mask, stalk * 0.8)
    texture = 0.5 + 0.5 * np.sin(polyp["freq"] * (u * np.cos(polyp["tex_angle"]) + v * np.sin(polyp["tex_angle"])))
    strength = 0.5 if polyp["morphology"] == "flat" else 1.0
    colour = polyp["colour"][None, None, :] * (0.75 + 0.25 * texture[..., None])
    img = img * (1 - strength * mask[..., None]) + strength * mask[..., None] * colour
    shade = np.clip(1.0 - d, 0, 1) ** 2 * 0.15 * strength  # dome shading
    img += shade[..., None]
    hy, hx = cy - 0.35 * r, cx - 0.3 * r  # specular highlight
    img += 0.5 * np.exp(-((y - hy) ** 2 + (x - hx) ** 2) / (2 * (0.08 * r + 1) ** 2))[..., None]
    return np.clip(img, 0, 1), mask


def _to_image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))


def _view(
    scene: Image.Image, rng: np.random.Generator, size: int, angle: float, zoom: float, gain: np.ndarray
) -> Image.Image:
    """Rotate, crop (zoom around a jittered centre), resize and recolour one frame of a scene."""
    s = scene.size[0]
    img = scene.rotate(angle + rng.normal(0, 2), resample=Image.Resampling.BILINEAR, fillcolor=(200, 120, 120))
    half = s * zoom / 2
    cx, cy = s / 2 + rng.normal(0, 0.02 * s, 2)
    img = img.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=float) / 255.0 * gain + rng.normal(0, 0.015, (size, size, 3))
    return _to_image(x)


def write_synthetic_colo_pair(
    root: str | Path, n_videos: int = 12, frames_per_view: int = 3, size: int = 96, seed: int = 0
) -> Path:
    """Write ``root/resized_frame/<video>/{1,2}/NNN.jpg`` and ``root/reports.csv`` (``id``, ``Eng_text``).

    Videos are ``<patient><n>`` (``ab1``, ``ab2``, ``cd1``, ...): every third patient has two videos, which
    share one report describing both polyps. Returns ``root``.
    """
    if n_videos < 2 or frames_per_view < 1 or size < 16:
        raise ValueError(
            f"need n_videos >= 2, frames_per_view >= 1, size >= 16; got {n_videos}, {frames_per_view}, {size}"
        )
    rng = np.random.default_rng(seed)
    root = Path(root)
    videos: list[tuple[str, str]] = []  # (patient, video)
    p = 0
    while len(videos) < n_videos:
        patient = _patient_name(p)
        for n in range(1, (3 if p % 3 == 0 else 2)):
            if len(videos) < n_videos:
                videos.append((patient, f"{patient}{n}"))
        p += 1
    findings: dict[str, list[str]] = {}
    scene_size = int(size * 1.5)
    for patient, video in videos:
        polyp = random_polyp(rng)
        location = _LOCATIONS[rng.integers(len(_LOCATIONS))]
        size_mm = round(5 + polyp["radius"] * 80)
        surface = _SURFACE[int(polyp["freq"] // 4) % len(_SURFACE)]
        findings.setdefault(patient, []).append(
            f"a {size_mm} mm {polyp['morphology']} polyp with a {surface} surface in the {location}"
        )
        scene = _to_image(polyp_scene(rng, scene_size, polyp)[0])
        for view, angle, zoom in (("1", 0.0, 0.62), ("2", rng.uniform(20, 70) * rng.choice([-1, 1]), 0.5)):
            gain = np.ones(3) if view == "1" else rng.uniform(0.85, 1.1, 3)
            folder = root / "resized_frame" / video / view
            folder.mkdir(parents=True, exist_ok=True)
            for f in range(frames_per_view):
                _view(scene, rng, size, angle, zoom, gain).save(folder / f"{f + 1:03d}.jpg", quality=92)
    rows = [[patient, "Colonoscopy found " + "; ".join(items) + "."] for patient, items in findings.items()]
    with atomic_path(root / "reports.csv") as tmp, tmp.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "Eng_text"])
        writer.writerows(rows)
    mark_generated(root, "Colo-Pair-layout polyp frames and reports")
    return root


def _person(
    rng: np.random.Generator, h: int, w: int, shirt: np.ndarray, trousers: np.ndarray, light: float
) -> Image.Image:
    x = np.empty((h, w, 3))
    x[:] = rng.uniform(0.3, 0.7, 3)
    x += 0.05 * _smooth_noise(rng, h, w, 3)[..., None]
    left, right = int(w * 0.25) + rng.integers(-2, 3), int(w * 0.75) + rng.integers(-2, 3)
    x[int(h * 0.05) : int(h * 0.2), int(w * 0.38) : int(w * 0.62)] = [0.85, 0.68, 0.55]  # head
    x[int(h * 0.2) : int(h * 0.55), left:right] = shirt
    x[int(h * 0.55) : int(h * 0.95), left + 2 : right - 2] = trousers
    return _to_image(x * light + rng.normal(0, 0.02, x.shape))


def write_synthetic_market1501(
    root: str | Path, n_ids: int = 10, images_per_id: int = 4, size: tuple[int, int] = (64, 32), seed: int = 0
) -> Path:
    """Write ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with Market-1501 names.

    The first ``ceil(n_ids / 2)`` identities (pids 1..) train, the others test (one query, the rest gallery
    on other cameras); ``bounding_box_test`` also holds one junk (``-1_...``) and one distractor
    (``0000_...``) image. Images are ``size`` = (H, W) JPEGs. Returns ``root``.
    """
    if n_ids < 4 or images_per_id < 2:
        raise ValueError(f"need n_ids >= 4 and images_per_id >= 2, got {n_ids}, {images_per_id}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    h, w = size
    folders = {k: root / k for k in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    light = rng.uniform(0.8, 1.15, 7)  # per camera 1..6
    n_train = (n_ids + 1) // 2
    frame = 0

    def save(folder: str, pid: int, cam: int, shirt: np.ndarray, trousers: np.ndarray) -> None:
        nonlocal frame
        frame += 1
        _person(rng, h, w, shirt, trousers, light[cam]).save(
            folders[folder] / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
            if pid >= 0
            else folders[folder] / f"-1_c{cam}s1_{frame:06d}_00.jpg",
            quality=92,
        )

    for i in range(n_ids):
        pid = i + 1
        shirt, trousers = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        cams = rng.permutation(np.arange(1, 7))[:3]
        if i < n_train:
            for k in range(images_per_id):
                save("bounding_box_train", pid, int(cams[k % 2]), shirt, trousers)
        else:
            save("query", pid, int(cams[0]), shirt, trousers)
            for k in range(images_per_id - 1):
                save("bounding_box_test", pid, int(cams[1 + k % 2]), shirt, trousers)
    save("bounding_box_test", -1, 1, rng.uniform(0, 1, 3), rng.uniform(0, 1, 3))
    save("bounding_box_test", 0, 2, rng.uniform(0, 1, 3), rng.uniform(0, 1, 3))
    mark_generated(root, "Market-1501-layout person images")
    return root
