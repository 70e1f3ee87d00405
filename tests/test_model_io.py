"""Saved models from before a module was renamed or dropped still load, to the same outputs."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpfuse.models import create_model, load_pretrained
from gpfuse.models.io import CheckpointMismatchError

TEXTS = [[f"the {name}.", f"a concept of the {name}."] for name in ("background", "organ")]

# model, options, a batch, and the earlier name of each renamed module (old -> new)
CASES = {
    "gpf_net": (
        dict(
            num_classes=3,
            image_encoder="efficientnet_lite0",
            image_weights=None,
            text_model=None,
            dim=16,
            num_fusion_layers=1,
            fusion_heads=2,
            fusion_ffn=16,
            final_layers=1,
            final_heads=2,
            final_ffn=16,
        ),
        {"image": torch.rand(2, 3, 32, 32)},
        {"encoder": "second_stage"},
    ),
    "ea_dk": (
        dict(encoder="efficientnet_lite0", encoder_weights=None, channels=8, attention_heads=2),
        {"image": torch.rand(2, 3, 64, 64)},
        {"encoder_attention.ffn.2": "encoder_attention.ffn.3", "dynamic_kernel.2": "dynamic_kernel.3"},
    ),
    "bipvl_seg": (
        dict(num_classes=2, class_texts=TEXTS, feature_size=12, fusion_heads=4, fusion_mlp=16, max_text_len=8),
        {"image": torch.rand(1, 1, 32, 64, 32)},  # the bottleneck must keep > 1 voxel for instance norm
        {"text": "text_encoder", "class_head.2": "class_head.3"},
    ),
}


def _as_saved_before(folder, old_of_new: dict[str, str]) -> None:
    """Rewrite ``folder/model.safetensors`` with the modules' earlier names."""
    path = folder / "model.safetensors"
    state = load_file(str(path))
    renamed = {}
    for key, value in state.items():
        new = next((n for n in old_of_new if key.startswith(n + ".")), None)
        renamed[old_of_new[new] + key[len(new) :] if new else key] = value
    assert renamed.keys() != state.keys()  # the test really rewrites names
    save_file(renamed, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("name", sorted(CASES))
def test_weights_saved_under_earlier_module_names_load_to_the_same_outputs(name, tmp_path):
    options, batch, renames = CASES[name]
    torch.manual_seed(0)
    model = create_model(name, **options).eval()
    assert model.renamed_modules == renames
    folder = model.save_pretrained(tmp_path / name)
    _as_saved_before(folder, {new: old for old, new in renames.items()})
    again = load_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch)[0], model(batch)[0])


def test_a_two_modality_grf_builds_no_auxiliary_head_and_older_saves_still_load(tmp_path, caplog):
    options = dict(input_dims={"text": 6, "audio": 4}, d_model=8, num_heads=2, num_layers=1, ffn_dim=8)
    model = create_model("grf", **options).eval()
    assert model.aux_head is None
    batch = {"text": torch.randn(2, 5, 6), "audio": torch.randn(2, 3, 4)}
    assert model(batch).aux is None
    folder = model.save_pretrained(tmp_path / "grf")
    state = load_file(str(folder / "model.safetensors"))
    state.update({"aux_head.0.weight": torch.zeros(8, 8), "aux_head.3.weight": torch.zeros(1, 8)})
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="gpfuse.models.io"):
        again = load_pretrained(folder).eval()
    assert "2 saved tensors of modules it no longer builds are ignored" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(again(batch).score, model(batch).score)
    state["head.0.bias"] = torch.zeros(3)  # anything else that does not fit is still refused
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="model.safetensors"):
        load_pretrained(folder)
