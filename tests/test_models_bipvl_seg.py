"""BiPVL-Seg: composed from MONAI's SwinUNETR (vision-only = SwinUNETR exactly), staged text encoder, BiFusion,
every parameter trained, batch independence, any patch size divisible by 32, the alignment losses by hand."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import train_losses
from gpfuse.encoders.staged_text import StagedTextEncoder, scale_boundaries
from gpfuse.encoders.text import load_text_backbone, tokenize
from gpfuse.fusion import build_fusion
from gpfuse.fusion.attention import DownsampledAttention
from gpfuse.losses import UncertaintyWeighting, class_info_nce, concept_info_nce, concept_similarity_weights
from gpfuse.models import create_model

TEXTS = [
    [f"A medical image of the {name}."] + [f"Concept {k} of the {name}." for k in range(5)]
    for name in ("background", "bright organ", "dark organ")
]
SMALL = dict(num_classes=3, class_texts=TEXTS, feature_size=12, fusion_heads=4, fusion_mlp=32, max_text_len=12)
PATCH = (32, 64, 32)


@pytest.fixture(scope="module")
def model():
    return create_model("bipvl_seg", **SMALL)


def test_vision_only_is_swin_unetr_exactly():
    net = create_model("bipvl_seg", **{**SMALL, "text": False, "alignment": False}).eval()
    assert net.text_encoder is None and net.bifusion is None
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        torch.testing.assert_close(net({"image": x}).logits, net.vision(x))  # MONAI's own forward


def _blocks_per_stage(net) -> list[int]:
    return [len(getattr(net.vision.swinViT, f"layers{i}")[0].blocks) for i in range(1, 5)]


def test_swin_depths_reach_monai(model):
    assert _blocks_per_stage(model) == [2, 2, 2, 2]  # the paper's (Swin-T's) by default
    net = create_model("bipvl_seg", **{**SMALL, "text": False, "alignment": False, "depths": [1, 2, 1, 1]})
    assert _blocks_per_stage(net) == [1, 2, 1, 1]
    shifts = [tuple(block.shift_size) != (0, 0, 0) for block in net.vision.swinViT.layers2[0].blocks]
    assert shifts == [False, True]  # stage 2 keeps its shifted-window block


def test_shapes_and_that_fusion_starts_as_the_identity(model):
    model.eval()
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        out = model({"image": x})
        assert out.logits.shape == (2, 3, *PATCH) and out.class_logits.shape == (2, 1 * 2 * 1, 3)
        assert out.vision_classes.shape == (2, 3, 128) and out.text_classes.shape == (2, 3, 128)
        assert out.text_concepts.shape == (2, 3, 5, 128)
        torch.testing.assert_close(out.logits, model.vision(x))  # zero-initialised BiFusion outputs
        with torch.no_grad():
            model.bifusion[0].volume_out.weight.normal_(std=0.1)
        assert not torch.allclose(model({"image": x}).logits, model.vision(x))
        model.bifusion[0].volume_out.weight.zero_()


@pytest.mark.parametrize("alignment", [True, False])
def test_every_parameter_gets_a_gradient(alignment):
    torch.manual_seed(0)
    net = create_model("bipvl_seg", **{**SMALL, "alignment": alignment}).train()
    for block in net.bifusion:  # the output projections start at 0: move them, or nothing behind them learns
        for layer in (block.volume_out, block.text_out):
            if layer is not None:
                torch.nn.init.normal_(layer.weight, std=0.05)
    out = net({"image": torch.randn(2, 1, *PATCH)})
    loss = out.logits.square().mean()
    if alignment:
        loss = (
            loss
            + out.class_logits.square().mean()
            + out.text_concepts.mean()
            + out.vision_classes.mean()
            + out.text_classes.mean()
        )
    loss.backward()
    missing = [
        n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing
    assert (net.bifusion[3].text_out is None) == (not alignment)  # nothing reads the last text without alignment


def test_eval_batch_independence(model):
    model.eval()
    for block in model.bifusion:
        torch.nn.init.normal_(block.volume_out.weight, std=0.05)
    x = torch.randn(3, 1, *PATCH)
    with torch.no_grad():
        together = model({"image": x})
        alone = [model({"image": x[i : i + 1]}) for i in range(3)]
    torch.testing.assert_close(together.logits, torch.cat([a.logits for a in alone]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        together.vision_classes, torch.cat([a.vision_classes for a in alone]), atol=1e-4, rtol=1e-4
    )


def test_any_patch_divisible_by_32_and_a_clear_error_otherwise(model):
    model.eval()
    with torch.no_grad():
        out = model({"image": torch.randn(1, 1, 64, 64, 64)})
    assert out.logits.shape == (1, 3, 64, 64, 64) and out.class_logits.shape == (1, 8, 3)
    with pytest.raises(ValueError, match="divisible by"):
        model({"image": torch.randn(1, 1, 40, 64, 32)})


def test_prompts_must_cover_every_class():
    with pytest.raises(ValueError, match=r"one list of prompts per class \(3\), got 2"):
        create_model("bipvl_seg", **{**SMALL, "class_texts": TEXTS[:2]})
    with pytest.raises(ValueError, match="alignment needs the text branch"):
        create_model("bipvl_seg", **{**SMALL, "text": False})


def test_a_few_steps_lower_the_loss():
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = create_model("bipvl_seg", **{**SMALL, "alignment": False})
    x = torch.randn(1, 1, *PATCH)
    label = (x > 0.5).long() + (x > 1.5).long()  # intensity decides the class: learnable
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = train_losses(optimizer, lambda: loss_fn(net({"image": x}).logits, label), 6)
    assert losses[-1] < 0.8 * losses[0]


# ---- parts --------------------------------------------------------------------------------------------


def test_staged_text_encoder_equals_the_plain_model():
    assert scale_boundaries((1, 6, 8, 10, 12), 6) == (1, 3, 4, 5, 6)
    assert scale_boundaries((1, 6, 8, 10, 12), 12) == (1, 6, 8, 10, 12)
    assert scale_boundaries((1, 6, 8, 10, 12), 5) == (1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="cannot be cut into 5 stages"):
        scale_boundaries((1, 6, 8, 10, 12), 4)
    encoder = StagedTextEncoder(trainable=False).eval()
    ids, mask = (
        torch.from_numpy(a) for a in tokenize(["the anterior hippocampus", "a longer sentence here"], "minilm", 10)
    )
    plain, _ = load_text_backbone("minilm")
    with torch.no_grad():
        reference = plain.eval()(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(encoder.full(ids, mask)[mask], reference[mask], atol=1e-5, rtol=1e-5)


def test_downsampled_attention_is_multi_head_attention_at_rate_one():
    attn = DownsampledAttention(16, 4, downsample_rate=1).eval()
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.load_state_dict(attn.out_proj.state_dict())
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    expected, _ = mha(q, kv, kv, key_padding_mask=~mask)
    torch.testing.assert_close(attn(q, kv, kv, mask), expected, atol=1e-5, rtol=1e-5)
    assert DownsampledAttention(16, 4, downsample_rate=2).q_proj.out_features == 8


def test_bifusion_block_shapes_and_masks():
    block = build_fusion("bifusion", dim=8, text_dim=12, depth=2, num_heads=2, mlp_dim=16).eval()
    with torch.no_grad():
        block.volume_out.weight.normal_()
        block.text_out.weight.normal_()
        feats, text = torch.randn(2, 8, 2, 3, 2), torch.randn(2, 4, 12)
        mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
        fused, new_text = block(feats, text, mask)
        assert fused.shape == feats.shape and new_text.shape == text.shape
        garbage = text.clone()
        garbage[1, 2:] = 1e3  # masked text tokens change nothing at real positions
        again, again_text = block(feats, garbage, mask)
    torch.testing.assert_close(again, fused, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again_text[mask], new_text[mask], atol=1e-4, rtol=1e-4)


def test_class_info_nce_by_hand():
    v, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    s = torch.einsum("bcd,bkd->bck", F.normalize(v, dim=-1), F.normalize(t, dim=-1)) / 0.2
    expected = 0
    for b in range(2):
        for c in range(3):
            expected += -torch.log_softmax(s[b, c], 0)[c] - torch.log_softmax(s[b, :, c], 0)[c]
    assert class_info_nce(v, t, 0.2).item() == pytest.approx(expected.item() / (2 * 2 * 3), rel=1e-5)


def test_concept_weighted_class_info_nce_by_hand():
    torch.manual_seed(1)
    v, t, concepts = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 5, 4)
    s = torch.einsum("bcd,bkd->bck", F.normalize(v, dim=-1), F.normalize(t, dim=-1)) / 0.2
    expected = 0
    for b in range(2):
        concept_sim = torch.stack([F.cosine_similarity(v[b, c][None], concepts[b, c]).mean() for c in range(3)])
        w = 3 * torch.softmax(concept_sim / 0.2, 0)
        assert w.sum().item() == pytest.approx(3.0)
        for c in range(3):
            term = -torch.log_softmax(s[b, c], 0)[c] - torch.log_softmax(s[b, :, c], 0)[c]
            expected += w[c] * term / 2
    weights = concept_similarity_weights(v, concepts, 0.2)
    assert not weights.requires_grad and weights.shape == (2, 3)
    assert class_info_nce(v, t, 0.2, weights).item() == pytest.approx(expected.item() / 6, rel=1e-5)
    assert class_info_nce(v, t, 0.2, torch.ones(2, 3)).item() == pytest.approx(class_info_nce(v, t, 0.2).item())


def test_concept_info_nce_takes_the_hardest_negatives():
    torch.manual_seed(0)
    v, concepts = torch.randn(1, 3, 4), torch.randn(1, 3, 5, 4)
    sim = torch.einsum("bcd,bjkd->bcjk", F.normalize(v, dim=-1), F.normalize(concepts, dim=-1)) / 0.2
    c, k = 0, 2  # class 0's vision embedding against its concept 2
    negatives = sim[0, c, 1:].flatten().topk(3).values  # the 3 most similar concepts of classes 1 and 2
    term = -torch.log_softmax(torch.cat([sim[0, c, c, k : k + 1], negatives]), 0)[0]
    terms = [
        -torch.log_softmax(
            torch.cat(
                [
                    sim[0, i, i, j : j + 1],
                    sim[0, i].masked_fill(torch.arange(3)[:, None] == i, -1e9).flatten().topk(3).values,
                ]
            ),
            0,
        )[0]
        for i in range(3)
        for j in range(5)
    ]
    assert concept_info_nce(v, concepts, 0.2, 3).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert terms[c * 5 + k].item() == pytest.approx(term.item(), rel=1e-6)
    easiest = sim[0, c, 1:].flatten().argmin()  # moving the least similar negative changes nothing for class 0
    moved = concepts.clone()
    moved[0, 1 + easiest // 5, easiest % 5] = -v[0, c] * 10
    sim_moved = torch.einsum("bcd,bjkd->bcjk", F.normalize(v, dim=-1), F.normalize(moved, dim=-1)) / 0.2
    assert sim_moved[0, c, 1:].flatten().topk(3).values.tolist() == pytest.approx(negatives.tolist())


def test_uncertainty_weighting_formula():
    weighting = UncertaintyWeighting(2)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.0, 1.0]))
    losses = [torch.tensor(2.0), torch.tensor(3.0)]
    expected = 2.0 / 2 + 0.0 / 2 + 3.0 / (2 * torch.e) + 1.0 / 2
    assert weighting(losses).item() == pytest.approx(expected, rel=1e-6)
    weighting(losses).backward()
    assert weighting.log_vars.grad is not None
    with pytest.raises(ValueError, match="expected 2 losses"):
        weighting(losses[:1])


def test_instance_norms_normalise_in_fp32_under_autocast():
    """A bf16 instance norm of a 2-voxel channel gives 0 where +-1 is right (and NaN gradients in training)."""
    net = create_model("bipvl_seg", **{**SMALL, "text": False, "alignment": False})
    norm = next(m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    x = torch.tensor([3.0, 3.02]).reshape(1, 1, 1, 2, 1).expand(1, norm.num_features, 1, 2, 1).bfloat16()
    exact = torch.nn.functional.instance_norm(x.float())  # about -+0.96 (eps 1e-5)
    plain = torch.nn.functional.instance_norm(x)
    assert not torch.allclose(plain.float(), exact, atol=0.1)  # the failure being guarded against
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.float32 and torch.allclose(out, exact, atol=1e-6)
    assert norm(x).dtype == torch.bfloat16  # outside autocast: untouched


def test_3d_convolutions_run_in_fp32_under_cpu_autocast_only():
    net = create_model("bipvl_seg", **{**SMALL, "text": False, "alignment": False})
    conv = net.vision.decoder5.conv_block.conv1.conv
    assert isinstance(conv, torch.nn.Conv3d) and set(conv.state_dict()) == {"weight"}
    x = torch.randn(1, conv.in_channels, 2, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.float32  # a plain Conv3d gives bfloat16 here
        assert torch.nn.Conv3d(2, 2, 3)(torch.randn(1, 2, 4, 4, 4)).dtype == torch.bfloat16
    assert torch.equal(conv(x), torch.nn.functional.conv3d(x, conv.weight, None, conv.stride, conv.padding))


@pytest.mark.parametrize("global_alignment", ["concept_weighted", "uniform"])
@pytest.mark.parametrize("local_alignment", [True, False])
def test_the_alignment_ablation_switches(global_alignment, local_alignment):
    from gpfuse.models.bipvl_seg import BiPVLSegOutput
    from gpfuse.tasks.segmentation3d import Segmentation3DTask

    torch.manual_seed(0)
    v, t, concepts = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 5, 4)
    out = BiPVLSegOutput(torch.zeros(1), None, v, t, concepts)
    task = Segmentation3DTask(
        torch.nn.Linear(1, 1), ("a", "b", "c"), global_alignment=global_alignment, local_alignment=local_alignment
    )
    weights = concept_similarity_weights(v, concepts) if global_alignment == "concept_weighted" else None
    expected = class_info_nce(v, t, 0.2, weights) + (concept_info_nce(v, concepts, 0.2, 3) if local_alignment else 0)
    assert task._alignment_loss(out).item() == pytest.approx(float(expected), rel=1e-6)


def test_an_unknown_global_alignment_is_refused():
    from gpfuse.tasks.segmentation3d import Segmentation3DTask

    with pytest.raises(ValueError, match="global_alignment must be one of"):
        Segmentation3DTask(torch.nn.Linear(1, 1), ("a", "b"), global_alignment="paper")
