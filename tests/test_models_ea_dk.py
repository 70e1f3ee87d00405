"""EA-DK: shapes per stage, gradients, eval batch independence, the kernel parts by hand, learning."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch.nn import functional as F

from conftest import train_losses
from gpfuse.fusion import build_fusion
from gpfuse.models import create_model
from gpfuse.models.ea_dk import apply_kernel, region_descriptor


@pytest.fixture(scope="module")
def model():
    return create_model("ea_dk", encoder="efficientnet_lite0", encoder_weights=None)


@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_shapes_of_every_stage(model, size):
    model.eval()
    with torch.no_grad():
        out = model({"image": torch.randn(2, 3, *size)})
    assert out.logits.shape == (2, 1, *size)
    strides = [32, 16, 8, 4, 2]
    assert [s.shape[-2:] for s in out.stages] == [(-(-size[0] // k), -(-size[1] // k)) for k in strides]
    assert len(out.gates) == 4 and out.gates[0].shape == (2, 2, 32) and ((out.gates[0] > 0) & (out.gates[0] < 1)).all()
    assert out.attention.shape == (2, 5, 5)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 5))


def test_every_parameter_gets_a_gradient(model):
    model.train()
    model.zero_grad()
    for block in model.encoder._blocks:  # stochastic depth may drop a block for the whole tiny batch
        block.drop_path = 0.0
    out = model({"image": torch.randn(2, 3, 64, 64)})
    sum(s.square().mean() for s in out.stages).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_batch_independent(model):
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = model({"image": x}).logits
        alone = torch.cat([model({"image": x[i : i + 1]}).logits for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("encoder", ["res2net50_v1b_26w_4s", "resnet50"])
def test_other_encoders_plug_in_by_name(encoder):
    net = create_model("ea_dk", encoder=encoder, encoder_weights=None).eval()
    with torch.no_grad():
        out = net({"image": torch.randn(1, 3, 64, 64)})
    assert out.logits.shape == (1, 1, 64, 64) and net.uca[-1][0].in_channels == 2048
    with pytest.raises(KeyError, match="valid names"):
        create_model("ea_dk", encoder="vgg16", encoder_weights=None)


def test_kernel_application_and_region_descriptor_by_hand():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    kernel, bias = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]), torch.tensor([0.25, -1.0])
    logits = apply_kernel(features, kernel, bias)
    expected = torch.stack([features[0, 0] - features[0, 2] + 0.25, 0.5 * (features[1, 0] + features[1, 1]) - 1.0])
    torch.testing.assert_close(logits[:, 0], expected)
    previous = torch.tensor([[[[-30.0, 30.0]]], [[[-2.0, -2.0]]]])  # (2, 1, 1, 2): upsampled to 2 x 2
    d = region_descriptor(features, previous)
    w = torch.sigmoid(F.interpolate(previous, size=(2, 2), mode="bilinear", align_corners=False))
    torch.testing.assert_close(d, (features * w).sum((-2, -1)) / w.sum((-2, -1)))
    torch.testing.assert_close(d[0], features[0][:, :, 1].mean(-1))  # under the right column only
    torch.testing.assert_close(d[1], features[1].mean((-2, -1)))  # a uniform prediction: the plain mean


def test_gated_kernel_update_follows_ldnet():
    update = build_fusion("kernel_update", dim=8)
    k, d = torch.randn(3, 8), torch.randn(3, 8)
    new, gates = update(k, d, return_gate=True)
    d_in, d_out = update.descriptor_proj(d).split(8, -1)
    k_in, k_out = update.kernel_proj(k).split(8, -1)
    g_d = torch.sigmoid(update.descriptor_gate_norm(update.descriptor_gate(d_in * k_in)))
    g_k = torch.sigmoid(update.kernel_gate_norm(update.kernel_gate(d_in * k_in)))
    torch.testing.assert_close(
        new,
        torch.relu(update.out[1](update.out[0](g_d * update.descriptor_norm(d_out) + g_k * update.kernel_norm(k_out)))),
    )
    torch.testing.assert_close(gates, torch.stack([g_k, g_d], dim=1))
    assert (new >= 0).all() and new.shape == (3, 8)
    new.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in update.parameters())


def test_a_few_steps_lower_the_deep_supervision_loss():
    from gpfuse.data.synthetic_reid import polyp_scene, random_polyp

    rng = __import__("numpy").random.default_rng(0)
    scenes = [polyp_scene(rng, 48, random_polyp(rng, (0.3, 0.7))) for _ in range(4)]
    image = torch.tensor(__import__("numpy").stack([s[0] for s in scenes]), dtype=torch.float32).permute(0, 3, 1, 2)
    mask = torch.tensor(__import__("numpy").stack([s[1] > 0.5 for s in scenes]), dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(0)
    net = create_model("ea_dk", encoder="efficientnet_lite0", encoder_weights=None, channels=16)
    loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="same")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = train_losses(optimizer, lambda: loss_fn(net({"image": image}).stages, mask), 12)
    assert losses[-1] < 0.7 * losses[0]


def test_a_decoder_that_stops_at_stride_4_is_the_papers_without_its_last_stage():
    torch.manual_seed(0)
    cut = create_model("ea_dk", encoder="efficientnet_lite0", encoder_weights=None, decoder_stride=4).eval()
    full = create_model("ea_dk", encoder="efficientnet_lite0", encoder_weights=None).eval()
    missing, unexpected = full.load_state_dict(cut.state_dict(), strict=False)
    assert not unexpected and {k.split(".")[0] + "." + k.split(".")[1] for k in missing} == {
        "decoder.3",
        "kernel_updates.3",
    }
    assert cut.stage_strides == (2, 4, 8, 16, 32) and cut.decoder_strides == (16, 8, 4)
    assert full.decoder_strides == (16, 8, 4, 2)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out, paper = cut({"image": x}), full({"image": x})
    assert [s.shape[-2:] for s in out.stages] == [(2, 3), (4, 6), (8, 12), (16, 24)] and len(out.gates) == 3
    for a, b in zip(out.stages, paper.stages[:4], strict=False):  # the same predictions down to stride 4
        torch.testing.assert_close(a, b)
    upsampled = F.interpolate(out.stages[-1], size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.logits, upsampled)
    assert out.attention.shape == (2, 5, 5)  # encoder attention still reads all five stages
    cut.train()
    sum(s.square().mean() for s in cut({"image": x}).stages).backward()
    assert all(p.grad is not None for p in cut.parameters())


@pytest.mark.parametrize("stride", [1, 3, 32])
def test_a_decoder_stride_that_is_no_stage_is_refused(stride):
    with pytest.raises(ValueError, match=f"decoder_stride must be 2, 4, 8 or 16 .*got {stride}"):
        create_model("ea_dk", encoder_weights=None, decoder_stride=stride)
