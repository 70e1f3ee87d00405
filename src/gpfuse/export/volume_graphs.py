"""Export spec of 3D segmentation: BiPVL-Seg ``image`` (B, C_in, *roi_size) -> ``logits`` (B, C, *roi_size), one
sliding-window patch.

The patch size is fixed at the run's ``roi_size`` (sliding-window inference only ever feeds such patches); the
batch axis is dynamic. The class prompts' text states up to the first fusion (``BiPVLSeg.prompt_prefix``: the
token embeddings and text stages 0-1) are the same for every image: they are computed once here and stored in
the graph as a constant, so the token embedding table and those layers are not in the file. The later text
stages stay: they read the [CLS] states each BiFusion block updates from the image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from gpfuse.export.graph_spec import GraphSpec, register_spec
from gpfuse.export.image_graphs import split_files
from gpfuse.inference.saved_run import SavedRun
from gpfuse.inference.volumes import VolumePredictor

if TYPE_CHECKING:
    from gpfuse.config import VolumeDataConfig
    from gpfuse.models.bipvl_seg import BiPVLSeg

__all__ = ["PromptedVolumeGraph", "volume_patches", "volume_spec"]


class PromptedVolumeGraph(nn.Module):
    """BiPVL-Seg with its prompt prefix computed once: ``{"image": (B, C_in, X, Y, Z)}`` -> logits
    (B, C, X, Y, Z), the model's own output (a vision-only model has no prefix)."""

    prompt_prefix: Tensor | None

    def __init__(self, model: BiPVLSeg) -> None:
        super().__init__()
        self.model = model
        prefix = None
        if model.text_encoder is not None:
            with torch.no_grad():
                prefix = model.eval().prompt_prefix()
        self.register_buffer("prompt_prefix", prefix)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.model(inputs, self.prompt_prefix).logits


def volume_patches(predictor: VolumePredictor, paths: Sequence[Path], roi_size: Sequence[int]) -> Tensor:
    """(N, C_in, *roi_size): the roi-size centre patch of each volume after the run's evaluation transform
    (orientation, spacing, intensity; zero-padded where the volume is smaller, as the sliding window pads)."""
    from monai.transforms import ResizeWithPadOrCrop

    crop = ResizeWithPadOrCrop(tuple(roi_size), mode="constant")
    patches = []
    for path in paths:
        try:
            image = predictor.transform({"image": str(path)})["image"]
        except Exception as err:  # MONAI wraps the reader's error
            raise ValueError(
                f"{path}: not a readable volume ({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from None
        if image.shape[0] != predictor.in_channels:
            raise ValueError(f"{path}: {image.shape[0]} channel(s), the model takes {predictor.in_channels}")
        patches.append(torch.as_tensor(crop(image)).float())
    return torch.stack(patches)


@register_spec("segmentation3d")
def volume_spec(run: SavedRun, run_dir: Path, given: Sequence[Path] | None, limit: int) -> GraphSpec:
    """BiPVL-Seg: ``image`` (B, C_in, *roi_size) -> ``logits`` (B, C, *roi_size), the prompts' prefix a constant."""
    predictor = VolumePredictor(run)
    d = cast("VolumeDataConfig", run.config.data)
    paths = list(given) if given else split_files(run_dir, "image", limit)
    if not paths:
        raise FileNotFoundError(
            f"{run_dir / 'splits'}: none of the run's validation or test volumes exists from here (paths are "
            "relative to where it was trained); give real volumes to verify with (--verify-with)"
        )
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"volume(s) to verify with not found: {', '.join(missing)}")
    example = volume_patches(predictor, paths, d.roi_size)
    meta = {
        "input_size": json.dumps(list(d.roi_size)),
        "input_channels": str(predictor.in_channels),
        "pixdim": json.dumps(list(d.pixdim) if d.pixdim is not None else None),
        "orientation": "RAS",
        "intensity": d.intensity,
        "input_range": (
            f"CT: clip to the window [{d.ct_window[0]:g}, {d.ct_window[1]:g}] HU, scaled to [0, 1]"
            if d.intensity == "ct"
            else "MR: (x - mean) / std per channel over the nonzero voxels"
        ),
        "ct_window": json.dumps(list(d.ct_window)),
        "crop_foreground": json.dumps(d.crop_foreground),
        "class_names": json.dumps(predictor.class_names),
        "sw_overlap": str(d.overlap_test),
        "sw_batch_size": str(d.sw_batch_size),
        "sw_mode": "gaussian",
        "outputs": (
            "logits: (B, C, *input_size) for one patch; stitch roi-size patches with a sliding window (overlap "
            "sw_overlap, gaussian weights), softmax over C, argmax = class index into class_names"
        ),
    }
    graph = PromptedVolumeGraph(cast("BiPVLSeg", run.model))
    return GraphSpec(graph, {"image": example}, ["logits"], {"image": {0: "batch"}}, meta)
