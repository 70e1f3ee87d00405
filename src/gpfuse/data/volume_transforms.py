"""MONAI transform pipelines for 3D segmentation (BiPVL-Seg / Swin UNETR recipes).

Shared: load NIfTI, channel first, RAS orientation, optional resampling to ``pixdim`` (bilinear image,
nearest label), intensity (CT: window ``[a_min, a_max]`` scaled to [0, 1] and clipped; MR: z-score over
non-zero voxels per channel), optional crop to the image's foreground. Training adds padding to the patch,
``samples`` random patches per volume balanced between foreground and background centres
(``RandCropByPosNegLabeld``, pos 1 : neg 1), random flips on every axis, 90-degree rotations in planes whose
patch sides are equal, and intensity scale/shift. MONAI gives each random transform a random state of its
own; :func:`draw_from_numpy_global` points them all at NumPy's global one, which the run's seed sets and a
checkpoint saves and restores (MONAI's DataLoader still re-seeds them per worker process).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["draw_from_numpy_global", "volume_transforms"]


LABELS = ("transformed", "original", "none")


def volume_transforms(
    roi_size: Sequence[int],
    train: bool,
    label: str = "transformed",
    pixdim: Sequence[float] | None = None,
    intensity: str = "mr",
    ct_window: Sequence[float] = (-175.0, 250.0),
    crop_foreground: bool = True,
    samples: int = 2,
    flip_axes: Sequence[int] = (0, 1, 2),
    flip_prob: float = 0.1,
):
    """The ``monai.transforms.Compose`` for one split (``train`` or evaluation). Keys: ``image`` and ``label``.

    ``label``: ``transformed`` goes through the same spatial transforms as the image (training);
    ``original`` is the label file as stored, channel first, for scoring on its own grid after the prediction
    is inverted (evaluation); ``none`` reads no label (prediction).

    ``flip_axes`` are the (RAS) axes along which the anatomy may be mirrored, each flipped with ``flip_prob``
    (0.1 as in MONAI's Swin UNETR tutorial); 90-degree rotations use only planes of two such axes with equal
    patch sides. Leave out an axis that names classes: L-R (0) for left/right organs, A-P (1) for the
    anterior/posterior hippocampus, or a flip turns one class into the other.
    """
    from monai import transforms as T

    if intensity not in ("ct", "mr"):
        raise ValueError(f"intensity must be 'ct' or 'mr', got {intensity!r}")
    if label not in LABELS or (train and label != "transformed"):
        raise ValueError(f"label must be one of {list(LABELS)} ('transformed' for training), got {label!r}")
    keys = ["image", "label"] if label == "transformed" else ["image"]
    modes = ("bilinear", "nearest")[: len(keys)]
    steps = [T.LoadImaged(["label"], image_only=True), T.EnsureChannelFirstd(["label"])] if label == "original" else []
    steps += [
        T.LoadImaged(keys, image_only=True),
        T.EnsureChannelFirstd(keys),
        T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if pixdim is not None:
        steps.append(T.Spacingd(keys, pixdim=tuple(pixdim), mode=modes))
    if intensity == "ct":
        steps.append(
            T.ScaleIntensityRanged("image", a_min=ct_window[0], a_max=ct_window[1], b_min=0.0, b_max=1.0, clip=True)
        )
    else:
        steps.append(T.NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    if crop_foreground:
        steps.append(T.CropForegroundd(keys, source_key="image", allow_smaller=True))
    if train:
        roi = tuple(roi_size)
        steps += [
            T.SpatialPadd(keys, spatial_size=roi),
            T.RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=roi,
                pos=1,
                neg=1,
                num_samples=samples,
                image_key="image",
                image_threshold=0,
            ),
            *[T.RandFlipd(keys, prob=flip_prob, spatial_axis=axis) for axis in flip_axes],
        ]
        planes = [(i, j) for i in flip_axes for j in flip_axes if i < j and roi[i] == roi[j]]
        steps += [T.RandRotate90d(keys, prob=flip_prob, max_k=3, spatial_axes=p) for p in planes]
        steps += [
            T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    steps.append(T.EnsureTyped(["image", "label"] if label != "none" else ["image"], track_meta=True))
    return T.Compose(steps)


def draw_from_numpy_global(transform) -> int:
    """Make every random MONAI transform in ``transform`` (a ``Compose``) draw from NumPy's global random
    state, so that Lightning's seeding sets their stream and a resumed run continues it (each MONAI transform
    otherwise keeps a private ``RandomState`` that no checkpoint holds). Returns how many there are."""
    import numpy as np
    from monai.transforms import Randomizable

    def leaves(t):  # not Compose.flatten(): building a Compose re-seeds every transform in it
        return [leaf for child in t.transforms for leaf in leaves(child)] if hasattr(t, "transforms") else [t]

    randomizable = [t for t in leaves(transform) if isinstance(t, Randomizable)]
    for t in [transform, *randomizable]:
        t.set_random_state(state=np.random.mtrand._rand)
    return len(randomizable)
