"""GPF-Net: shapes, gradients, eval batch independence (the public code's bug), image-only path, learning."""

from __future__ import annotations

import pytest
import torch

from conftest import train_losses
from gpfuse.encoders.text import tokenize
from gpfuse.losses import batch_hard_triplet_loss
from gpfuse.models import create_model

SMALL = dict(
    num_classes=4,
    image_encoder="efficientnet_lite0",
    image_weights=None,
    dim=32,
    num_fusion_layers=2,
    fusion_heads=4,
    fusion_ffn=64,
    final_layers=1,
    final_heads=4,
    final_ffn=64,
    max_text_len=12,
)


@pytest.fixture(scope="module")
def model():
    return create_model("gpf_net", **SMALL)


def _batch(n=4, reports=("sessile polyp in the sigmoid colon", "pedunculated polyp, rectum", "", "flat lesion")):
    ids, mask = tokenize(list(reports[:n]), "minilm", 12)
    mask[[i for i, r in enumerate(reports[:n]) if not r]] = False
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(n, 3, 64, 64, generator=g),
        "text_ids": torch.from_numpy(ids),
        "text_mask": torch.from_numpy(mask),
        "pid": torch.tensor([0, 1, 0, 1][:n]),
    }


def test_shapes_gates_and_frozen_text_encoder(model):
    model.train()
    out = model(_batch())
    assert out.embedding.shape == (4, 32) and out.logits.shape == (4, 4)
    assert len(out.gates) == 2 and out.gates[0].shape == (4, 1, 32)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not model.text_encoder.model.training  # frozen encoder stays in eval mode (no dropout)


@pytest.mark.parametrize("norm_first", [False, True])
def test_every_trainable_parameter_gets_a_gradient(norm_first):
    model = create_model("gpf_net", **SMALL, norm_first=norm_first).train()
    model.zero_grad()
    out = model(_batch())
    (out.logits.logsumexp(1).mean() + out.embedding.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize("norm_first", [False, True])
def test_eval_embedding_is_batch_independent(norm_first):
    model = create_model("gpf_net", **SMALL, norm_first=norm_first).eval()
    batch = _batch()
    with torch.no_grad():
        together = model(batch).embedding
        alone = torch.cat([model({k: v[i : i + 1] for k, v in batch.items()}).embedding for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_missing_report_runs_image_only(model):
    model.eval()
    batch = _batch()
    with torch.no_grad():
        no_text = model({"image": batch["image"]}).embedding
        empty_report = model(batch).embedding[2]  # sample 2 has an empty report: all-False mask
    torch.testing.assert_close(empty_report, no_text[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(batch).embedding[0], no_text[0])  # a real report changes the embedding
    image_only = create_model("gpf_net", **{**SMALL, "text_model": None}).eval()
    assert image_only.text_encoder is None and image_only(batch).embedding.shape == (4, 32)


def test_query_protocol_parts_compose_to_forward(model):
    model.eval()
    batch = _batch()
    with torch.no_grad():
        emb, _ = model.fuse(
            model.image_tokens(batch["image"]),
            model.text_tokens(batch["text_ids"], batch["text_mask"]),
            batch["text_mask"],
        )
        torch.testing.assert_close(emb, model(batch).embedding)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    net = create_model("gpf_net", **{**SMALL, "bottleneck_dropout": 0.0, "dropout": 0.0})
    batch = _batch()
    batch["image"][2:] = batch["image"][:2] + 0.1 * torch.randn(2, 3, 64, 64)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)

    def compute_loss():
        out = net(batch)
        return torch.nn.functional.cross_entropy(out.logits, batch["pid"]) + batch_hard_triplet_loss(
            out.embedding, batch["pid"]
        )

    losses = train_losses(optimizer, compute_loss, 15)
    assert losses[-1] < 0.5 * losses[0]


def test_batch_hard_triplet_by_hand():
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive d=3 (to 1), closest negative d=1 (to 2): relu(3 - 1 + 0.3) = 2.3
    # anchor 1: pos 3, neg min(sqrt(10), sqrt(34)) = 3.1623: relu(3 - 3.1623 + 0.3) = 0.1377
    # anchor 2: pos 4 (to 3), neg 1 (to 0): 3.3 ; anchor 3: pos 4, neg 5: relu(-0.7) = 0
    expected = (2.3 + (3 - 10**0.5 + 0.3) + 3.3 + 0.0) / 4
    assert batch_hard_triplet_loss(emb, pids, 0.3).item() == pytest.approx(expected, abs=1e-5)
    assert batch_hard_triplet_loss(emb[:2], pids[:2]).item() == 0.0  # no negatives: no valid anchor


def test_profile_counts_the_text_encoder_apart(model):
    from gpfuse.tasks.profile import image_text_batch, profile_model

    figures = profile_model(model, image_text_batch(1, 64, 12), repeats=1)
    text = sum(p.numel() for p in model.text_encoder.parameters())
    assert figures["text_encoder"] == text and figures["without_text_encoder"] == figures["parameters"] - text
    assert figures["trainable"] == figures["without_text_encoder"]  # the text encoder is frozen
    assert figures["gflops"] > 0


def test_frozen_image_encoder_stays_in_eval_mode_without_gradients():
    net = create_model("gpf_net", **{**SMALL, "text_model": None, "train_image": False})
    # Lightning never calls .train(): the frozen encoder must be in eval mode from construction on
    assert not net.image_encoder.training and net.bottleneck.training
    net.train()
    assert not net.image_encoder.training and net.bottleneck.training
    assert not any(p.requires_grad for p in net.image_encoder.parameters())
    batch = _batch()
    # a loss that depends on the images: the embedding's sum does not (a normalisation makes it constant), so its
    # gradient was rounding noise, exactly 0 for 10 of 40 initialisations (issue 25)
    torch.nn.functional.cross_entropy(net(batch).logits, batch["pid"]).backward()
    assert net.bottleneck[0].weight.grad is not None


def test_frozen_batchnorm_fine_tunes_weights_but_keeps_running_statistics():
    torch.manual_seed(0)
    net = create_model("gpf_net", **{**SMALL, "text_model": None, "freeze_image_bn": True})
    bns = [m for m in net.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for _ in range(2):  # as built, and after an explicit .train()
        assert bns and not any(m.training for m in bns) and net.image_encoder.training
        net.train()
    before = {k: v.clone() for k, v in net.image_encoder.state_dict().items() if "running" in k}
    batch = _batch()
    # a loss that depends on the images: the embedding's sum does not (a normalisation makes it constant), so its
    # gradient was rounding noise, exactly 0 for 10 of 40 initialisations (issue 25)
    torch.nn.functional.cross_entropy(net(batch).logits, batch["pid"]).backward()
    after = net.image_encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.image_encoder._conv_stem.weight.grad.abs().sum() > 0 and bns[0].weight.grad is not None
    plain = create_model("gpf_net", **{**SMALL, "text_model": None})
    plain(_batch())  # without the switch the statistics move in training
    assert not torch.equal(plain.image_encoder._bn0.running_mean, net.image_encoder._bn0.running_mean)
