"""GRF and the unimodal baseline: shapes, gradients, eval batch independence, learning, save/load."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import train_losses
from gpfuse.models import create_model, load_pretrained, save_pretrained
from gpfuse.models.io import CheckpointMismatchError

DIMS = {"text": 12, "audio": 5, "vision": 7}
SMALL = dict(d_model=16, num_heads=2, num_layers=1, ffn_dim=32, dropout=0.1)


def _batch(n=4, dims=DIMS, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for i, (m, d) in enumerate(dims.items()):
        length = 6 + i
        batch[m] = torch.randn(n, length, d, generator=g)
        lengths = torch.randint(1, length + 1, (n,), generator=g)
        batch[f"{m}_mask"] = torch.arange(length) < lengths[:, None]
        batch[m][~batch[f"{m}_mask"]] = 0
    return batch


MODELS = {
    "grf": dict(input_dims=DIMS, order=["text", "audio", "vision"], **SMALL),
    "unimodal": dict(input_dims=DIMS, modality="audio", **SMALL),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_and_every_parameter_gets_a_gradient(name):
    model = create_model(name, **MODELS[name])
    out = model(_batch())
    assert out.score.shape == (4,)
    loss = out.score.square().mean() + (out.aux.square().mean() if out.aux is not None else 0)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_batch_independence(name):
    model = create_model(name, **MODELS[name]).eval()
    batch = _batch(5)
    with torch.no_grad():
        together = model(batch).score
        alone = torch.cat([model({k: v[i : i + 1] for k, v in batch.items()}).score for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = create_model(name, **{**MODELS[name], "dropout": 0.0})
    batch = _batch(32, seed=1)
    target = batch["audio"][:, 0, :2].sum(-1)  # a function of the inputs
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = train_losses(optimizer, lambda: F.l1_loss(model(batch).score, target), 30)
    assert losses[-1] < 0.7 * losses[0]


def test_grf_gates_and_aux_head_on_the_intermediate_state():
    model = create_model("grf", **MODELS["grf"]).eval()
    out = model(_batch())
    assert out.aux.shape == (4,) and len(out.gates) == 2 and out.gates[0].shape == (4, 16)
    with torch.no_grad():  # the auxiliary regressor reads the first fused state, not the final one
        fused = model.fusion(
            {m: model.projections[m](_batch()[m]) for m in DIMS}, {m: _batch()[f"{m}_mask"] for m in DIMS}
        )
        torch.testing.assert_close(out.aux, model.aux_head(fused.states[0]).squeeze(-1))
        assert not torch.allclose(fused.states[0], fused.state)
    no_aux = create_model("grf", **{**MODELS["grf"], "aux_head": False})
    assert no_aux(_batch()).aux is None
    two = create_model("grf", **{**MODELS["grf"], "order": ["text", "audio"]})
    assert two.aux_head is None and two(_batch()).aux is None  # the first fused state is the final one
    one_step = {k: v for k, v in _batch().items() if not k.startswith("vision")}
    assert model(one_step).aux is None  # a missing modality leaves one step: no intermediate state


def test_grf_two_modalities_matches_the_public_layout():
    model = create_model("grf", input_dims={"text": 384, "audio": 73}, order=["text", "audio"])
    blocks = model.fusion.blocks
    assert list(blocks) == ["audio"]  # n modalities -> n - 1 blocks
    assert len(blocks["audio"].cross.a_to_b.layers) == 4 and len(blocks["audio"].cross.b_to_a.layers) == 4


def test_grf_missing_modality_is_skipped_but_unknown_input_size_is_an_error():
    model = create_model("grf", **MODELS["grf"]).eval()
    batch = {k: v for k, v in _batch().items() if not k.startswith("vision")}
    assert len(model(batch).gates) == 1
    with pytest.raises(ValueError, match=r"\['depth'\] have no input size"):
        create_model("grf", input_dims=DIMS, order=["text", "depth"])
    with pytest.raises(KeyError, match="unknown model"):
        create_model("grff")


def test_save_and_load_round_trip_and_mismatch(tmp_path):
    model = create_model("grf", **MODELS["grf"]).eval()
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m", expected_name="grf").eval()
    batch = _batch()
    torch.testing.assert_close(model(batch).score, loaded(batch).score)
    with pytest.raises(CheckpointMismatchError, match="holds a 'grf' model, expected 'unimodal'"):
        load_pretrained(tmp_path / "m", expected_name="unimodal")
    other = create_model("grf", **{**MODELS["grf"], "d_model": 8})
    save_pretrained(other, tmp_path / "other")
    (tmp_path / "m" / "model.safetensors").replace(tmp_path / "keep.safetensors")
    (tmp_path / "other" / "model.safetensors").rename(tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="model.safetensors does not fit"):
        load_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a saved gpfuse model"):
        load_pretrained(tmp_path / "nothing")
