"""The fusion core: shapes, masks, gradients, eval-mode batch independence, linear growth of GRF."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpfuse.fusion import BINARY_FUSIONS, build_fusion
from gpfuse.fusion.attention import CrossAttention, DownsampledAttention, SymmetricCrossAttention, TwoWayAttention

D = 16


def _grad_check(module: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


# ---- binary fusions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BINARY_FUSIONS))
def test_binary_fusion_shapes_gate_and_grad(name):
    fuse = build_fusion(name, dim=D)
    a, b = torch.randn(3, 5, D, requires_grad=True), torch.randn(3, 5, D, requires_grad=True)
    out, gate = fuse(a, b, return_gate=True)
    assert out.shape == (3, 5, D)
    assert torch.equal(out, fuse(a, b))
    if name in {"concat", "sum"}:
        assert gate is None
    else:
        assert gate.shape == (3, 5, D) and ((gate >= 0) & (gate <= 1)).all()
    _grad_check(fuse, out.square().mean())
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(BINARY_FUSIONS))
def test_binary_fusion_batch_independent_in_eval(name):
    fuse = build_fusion(name, dim=D).eval()
    a, b = torch.randn(4, 3, D), torch.randn(4, 3, D)
    together = fuse(a, b)
    alone = torch.cat([fuse(a[i : i + 1], b[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone)


def test_gate_formulas_match_the_papers():
    a, b = torch.randn(2, 4, D), torch.randn(2, 4, D)
    gpf = build_fusion("image_gate", dim=D)
    image = torch.randn(2, D)
    g = torch.sigmoid(gpf.w_g(image)).unsqueeze(1)
    torch.testing.assert_close(gpf(image, b), (1 - g) * image.unsqueeze(1) + g * b)  # gate from the image only

    pgf = build_fusion("arbitration", dim=D)
    g = torch.sigmoid(pgf.w(torch.cat([a, b], -1)))
    torch.testing.assert_close(pgf(a, b), g * a + (1 - g) * b)

    gfu = build_fusion("gfu", dim=D).eval()
    j = torch.cat([a, b], -1)
    z, c = torch.sigmoid(gfu.w_z(j)), torch.tanh(gfu.w_c(j))
    torch.testing.assert_close(gfu(a, b), gfu.norm((1 - z) * a + z * c))

    torch.testing.assert_close(build_fusion("fixed_gate")(a, b), 0.5 * a + 0.5 * b)


def test_image_gate_is_constant_over_text_tokens():
    gpf = build_fusion("image_gate", dim=D)
    _, gate = gpf(torch.randn(2, D), torch.randn(2, 7, D), return_gate=True)
    assert gate.shape == (2, 1, D)


def test_unknown_fusion_and_bad_options_are_named():
    with pytest.raises(KeyError, match="unknown fusion 'gatez'.*gfu"):
        build_fusion("gatez", dim=D)
    with pytest.raises(TypeError, match="fusion 'gfu'"):
        build_fusion("gfu", dim=D, colour="red")
    with pytest.raises(ValueError, match="gate must be in"):
        build_fusion("fixed_gate", gate=2.0)
    with pytest.raises(ValueError, match="divisible"):
        build_fusion("cross_attention", dim=10, num_heads=4)


# ---- attention --------------------------------------------------------------------------------------


def _pad(x: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([x, 100 * torch.randn(x.shape[0], extra, x.shape[2])], dim=1)


def _run_pair(name, module, a, b, a_mask, b_mask):
    if name == "cross_attention":
        return (module(a, b, b_mask),)
    return module(a, b, a_mask, b_mask)


ATTENTIONS = {
    "cross_attention": dict(dim=D, num_heads=2),
    "symmetric_cross_attention": dict(dim=D, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.1),
    "two_way_attention": dict(dim=D, num_heads=2, mlp_dim=32),
}


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_attention_padding_changes_nothing(name):
    module = build_fusion(name, **ATTENTIONS[name]).eval()
    a, b = torch.randn(2, 4, D), torch.randn(2, 6, D)
    ones_a, ones_b = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)
    ref = _run_pair(name, module, a, b, ones_a, ones_b)
    # append 3 padded steps of garbage to both inputs: the real steps must not move
    mask_a = torch.cat([ones_a, torch.zeros(2, 3, dtype=torch.bool)], 1)
    mask_b = torch.cat([ones_b, torch.zeros(2, 3, dtype=torch.bool)], 1)
    padded = _run_pair(name, module, _pad(a, 3), _pad(b, 3), mask_a, mask_b)
    torch.testing.assert_close(padded[0][:, :4], ref[0], atol=1e-5, rtol=1e-5)
    if len(ref) > 1:
        torch.testing.assert_close(padded[1][:, :6], ref[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_attention_shapes_grad_and_batch_independence(name):
    module = build_fusion(name, **ATTENTIONS[name])
    a, b = torch.randn(3, 4, D), torch.randn(3, 6, D)
    mask_b = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0]], dtype=torch.bool)
    outs = _run_pair(name, module, a, b, None, mask_b)
    assert outs[0].shape == (3, 4, D) and (len(outs) == 1 or outs[1].shape == (3, 6, D))
    _grad_check(module, sum(o.square().mean() for o in outs))
    module.eval()
    with torch.no_grad():
        together = _run_pair(name, module, a, b, None, mask_b)
        alone = [_run_pair(name, module, a[i : i + 1], b[i : i + 1], None, mask_b[i : i + 1]) for i in range(3)]
    for k in range(len(together)):
        torch.testing.assert_close(together[k], torch.cat([o[k] for o in alone]), atol=1e-5, rtol=1e-5)


# ---- stacks -----------------------------------------------------------------------------------------


def _grf(order, num_layers=1, gate="gfu"):
    return build_fusion(
        "recursive",
        order=order,
        block={"name": "grf_block", "dim": D, "num_heads": 2, "num_layers": num_layers, "ffn_dim": 32, "gate": gate},
    )


def _modalities(names, batch=3, length=5):
    inputs = {m: torch.randn(batch, length + i, D) for i, m in enumerate(names)}
    masks = {
        m: torch.arange(x.shape[1]).expand(batch, -1) < torch.tensor([[x.shape[1]], [2], [3]])[:batch]
        for m, x in inputs.items()
    }
    return inputs, masks


def test_recursive_fusion_shapes_gates_and_grad():
    fusion = _grf(["text", "audio", "vision"])
    inputs, masks = _modalities(["text", "audio", "vision"])
    out = fusion(inputs, masks)
    assert out.state.shape == (3, D) and len(out.states) == 2 and out.applied == ["audio", "vision"]
    assert all(g.shape == (3, D) for g in out.gates)
    _grad_check(fusion, out.state.square().mean() + out.states[0].square().mean())


def test_recursive_fusion_padding_and_batch_independence():
    fusion = _grf(["text", "audio", "vision"]).eval()
    inputs, masks = _modalities(["text", "audio", "vision"])
    with torch.no_grad():
        ref = fusion(inputs, masks).state
        padded = {m: _pad(x, 4) for m, x in inputs.items()}
        pmasks = {m: torch.cat([k, torch.zeros(3, 4, dtype=torch.bool)], 1) for m, k in masks.items()}
        torch.testing.assert_close(fusion(padded, pmasks).state, ref, atol=1e-5, rtol=1e-5)
        alone = torch.cat(
            [
                fusion({m: x[i : i + 1] for m, x in inputs.items()}, {m: k[i : i + 1] for m, k in masks.items()}).state
                for i in range(3)
            ]
        )
    torch.testing.assert_close(alone, ref, atol=1e-5, rtol=1e-5)


def test_recursive_fusion_order_matters_and_missing_modality_is_skipped():
    inputs, masks = _modalities(["text", "audio", "vision"])
    fusion = _grf(["text", "audio", "vision"]).eval()
    without_audio = fusion({k: v for k, v in inputs.items() if k != "audio"}, masks)
    assert without_audio.applied == ["vision"] and len(without_audio.gates) == 1
    with pytest.raises(KeyError, match="unknown modalities"):
        fusion({"depth": torch.randn(3, 2, D)})
    with pytest.raises(ValueError, match="at least 2 distinct"):
        _grf(["text", "text"])


def test_recursive_fusion_with_a_fixed_gate_reports_constant_gates():
    out = _grf(["text", "audio"], gate="fixed_gate")(*_modalities(["text", "audio"]))
    assert torch.all(out.gates[0] == 0.5)


def _flops(module, inputs, masks) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(inputs, masks)
    return counter.get_total_flops()


def test_recursive_fusion_parameters_and_flops_grow_linearly():
    names = [f"m{i}" for i in range(8)]
    params, flops = [], []
    for n in range(2, 9):
        fusion = _grf(names[:n]).eval()
        inputs = {m: torch.randn(2, 6, D) for m in names[:n]}
        params.append(sum(p.numel() for p in fusion.parameters()))
        flops.append(_flops(fusion, inputs, None))
    second_diff = [params[i + 2] - 2 * params[i + 1] + params[i] for i in range(len(params) - 2)]
    assert second_diff == [0] * 5 and params[1] > params[0]
    flop_diff = [flops[i + 2] - 2 * flops[i + 1] + flops[i] for i in range(len(flops) - 2)]
    assert flop_diff == [0] * 5 and flops[1] > flops[0] > 0


def test_progressive_fusion_shares_or_not_and_returns_gates():
    spec = {"name": "image_gate", "dim": D}
    shared = build_fusion("progressive", block=spec, num_layers=3, share_weights=True)
    separate = build_fusion("progressive", block=spec, num_layers=3)
    assert len(shared.blocks) == 1 and len(separate.blocks) == 3
    image, text = torch.randn(2, D), torch.randn(2, 7, D)
    out, gates = separate(image, text, return_gate=True)
    assert out.shape == (2, 7, D) and len(gates) == 3
    _grad_check(separate, out.square().mean())
    w = separate.blocks[0].w_g
    expected = image.unsqueeze(1)
    for block in separate.blocks:
        g = torch.sigmoid(block.w_g(expected))
        expected = (1 - g) * expected + g * text
    torch.testing.assert_close(separate(image, text), expected)
    assert w is separate.blocks[0].w_g


def test_progressive_fusion_rejects_zero_layers():
    with pytest.raises(ValueError, match="num_layers"):
        build_fusion("progressive", block={"name": "sum"}, num_layers=0)


def test_all_pairs_baseline_grows_quadratically_and_respects_masks():
    names = [f"m{i}" for i in range(5)]
    params = [
        sum(
            p.numel()
            for p in build_fusion(
                "all_pairs", order=names[:n], dim=D, num_heads=2, num_layers=1, ffn_dim=32
            ).parameters()
        )
        for n in range(2, 6)
    ]
    second = [params[i + 2] - 2 * params[i + 1] + params[i] for i in range(2)]
    assert second[0] > 0 and second[0] == second[1]  # n(n-1) stacks: constant positive second difference
    fusion = build_fusion("all_pairs", order=["a", "b"], dim=D, num_heads=2, num_layers=1, ffn_dim=32).eval()
    inputs = {"a": torch.randn(2, 3, D), "b": torch.randn(2, 4, D)}
    masks = {m: torch.ones(2, x.shape[1], dtype=torch.bool) for m, x in inputs.items()}
    ref = fusion(inputs, masks)
    padded = {m: _pad(x, 2) for m, x in inputs.items()}
    pmasks = {m: torch.cat([k, torch.zeros(2, 2, dtype=torch.bool)], 1) for m, k in masks.items()}
    torch.testing.assert_close(fusion(padded, pmasks), ref, atol=1e-5, rtol=1e-5)
    assert ref.shape == (2, D)
    fusion.train()
    _grad_check(fusion, fusion(inputs, masks).square().mean())


# ---- GPF-Net's gated progressive layers --------------------------------------------------------------


def _gpf(share=True, norm_first=False):
    return build_fusion(
        "gpf_progressive",
        dim=D,
        num_layers=4,
        num_heads=2,
        ffn_dim=32,
        dropout=0.0,
        share_layers=share,
        norm_first=norm_first,
    )


def _joint(batch=3, length=6):
    x = torch.randn(batch, 1 + length, D)
    mask = torch.ones(batch, 1 + length, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False  # no report for sample 2: image token only
    return x, mask


def test_gpf_stack_shapes_gates_grad_and_sharing():
    shared, separate = _gpf(True), _gpf(False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    layer = separate.blocks[0]
    per_layer_shared = sum(p.numel() for p in [*layer.attn.parameters(), *layer.ffn.parameters()])
    assert n_separate - n_shared == 3 * per_layer_shared  # attention + FFN stored once instead of 4 times
    assert shared.blocks[0].attn is shared.blocks[3].attn and shared.blocks[0].norm_in is not shared.blocks[3].norm_in
    x, mask = _joint()
    out, gates = shared(x, mask=mask, return_gate=True)
    assert out.shape == x.shape and len(gates) == 4 and gates[0].shape == (3, 1, D)
    _grad_check(shared, out[:, 0].square().mean())


def test_gpf_pre_ln_layer_follows_its_formula_and_trains_every_parameter():
    stack = _gpf(norm_first=True)
    layer = stack.blocks[0]
    assert isinstance(layer.norm_attn, torch.nn.Identity)  # no LayerNorm on the residual stream
    x, mask = _joint()
    with torch.no_grad():  # x + attn(LN([I; F])), then x + FFN(LN(x))
        fused = layer.gate(x[:, :1], x[:, 1:])
        h = layer.norm_in(torch.cat([x[:, :1], fused], dim=1))
        y = x + layer.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
        y = y + layer.ffn(layer.norm_ffn(y))
        torch.testing.assert_close(layer(x, mask)[mask], y[mask])
    _grad_check(stack, stack(x, mask=mask)[:, 0].square().mean())


def test_gpf_post_ln_layer_follows_the_papers_formula():
    layer = _gpf(norm_first=False).blocks[0]
    assert isinstance(layer.norm_attn, torch.nn.LayerNorm)
    x, mask = _joint()
    with torch.no_grad():  # LN(x + attn(LN([I; F]))), then LN(x + FFN(x))
        fused = layer.gate(x[:, :1], x[:, 1:])
        h = layer.norm_in(torch.cat([x[:, :1], fused], dim=1))
        y = layer.norm_attn(x + layer.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0])
        y = layer.norm_ffn(y + layer.ffn(y))
        torch.testing.assert_close(layer(x, mask)[mask], y[mask])


@pytest.mark.parametrize("norm_first", [False, True])
def test_gpf_stack_masks_and_batch_independence(norm_first):
    stack = _gpf(norm_first=norm_first).eval()
    x, mask = _joint()
    with torch.no_grad():
        ref = stack(x, mask=mask)
        garbage = x.clone()
        garbage[~mask] = 1e3  # padded text tokens change nothing at real positions
        torch.testing.assert_close(stack(garbage, mask=mask)[mask], ref[mask], atol=1e-4, rtol=1e-4)
        alone = torch.cat([stack(x[i : i + 1], mask=mask[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(alone[mask], ref[mask], atol=1e-5, rtol=1e-5)
        image_only = stack(x[2:3, :1], mask=mask[2:3, :1])  # no text tokens at all
    torch.testing.assert_close(image_only[:, 0], ref[2:3, 0], atol=1e-5, rtol=1e-5)


# ---- the blocks of EA-DK, PGF-Net and BiPVL-Seg -----------------------------------------------------


def _randomise(*layers: torch.nn.Linear) -> None:
    """Give zero-initialised output projections weights, so that what they project shows in the output."""
    for layer in layers:
        torch.nn.init.normal_(layer.weight, std=0.5)
        torch.nn.init.normal_(layer.bias, std=0.5)


def _bifusion(update_text=True):
    from gpfuse.fusion.bifusion import BiFusionBlock

    torch.manual_seed(0)
    return BiFusionBlock(D, text_dim=12, depth=2, num_heads=2, mlp_dim=24, update_text=update_text)


def test_bifusion_starts_as_the_identity_and_then_follows_its_two_way_blocks():
    block = _bifusion()
    assert len(block.blocks) == 2
    features, text = torch.randn(2, D, 3, 4, 2), torch.randn(2, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    fused, words = block(features, text, mask)
    assert torch.equal(fused, features) and torch.equal(words, text)  # zero output projections
    _randomise(block.text_out, block.volume_out)
    fused, words = block(features, text, mask)
    tokens = features.flatten(2).transpose(1, 2)  # (B, 24, D), the voxels in memory order
    w = block.text_in(text / text.norm(dim=-1, keepdim=True))
    for two_way in block.blocks:
        w, tokens = two_way(w, tokens, mask)
    assert torch.allclose(fused, features + block.volume_out(tokens).transpose(1, 2).reshape(2, D, 3, 4, 2), atol=1e-6)
    assert torch.allclose(words, text + block.text_out(w), atol=1e-6)
    # the text is L2-normalised first: its scale does not matter; padded words do not either
    scaled = text * 7.0
    scaled[1, 3:] = torch.randn(2, 12)
    again, _ = block(features, scaled, mask)
    assert torch.allclose(again, fused, atol=1e-5)
    _grad_check(block, fused.square().mean() + words.square().mean())


def test_bifusion_without_a_text_update_hands_the_text_back_and_is_batch_independent():
    block = _bifusion(update_text=False).eval()
    assert block.text_out is None
    _randomise(block.volume_out)
    features, text = torch.randn(3, D, 2, 3, 2), torch.randn(3, 4, 12)
    fused, words = block(features, text)
    assert words is text and not torch.allclose(fused, features)
    one, _ = block(features[1:2], text[1:2])
    assert torch.allclose(one, fused[1:2], atol=1e-5)


def test_encoder_attention_pools_each_stage_attends_and_averages():
    from gpfuse.fusion.encoder_attention import EncoderAttention

    torch.manual_seed(0)
    attention = EncoderAttention(D, num_stages=3, num_heads=2)
    assert 0 < attention.stage_embedding.std() < 0.05  # a small random embedding per stage
    stages = [torch.randn(2, D, s, s) for s in (8, 4, 2)]
    context, weights = attention(stages)
    assert context.shape == (2, D) and weights.shape == (2, 3, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3), atol=1e-6)
    tokens = torch.stack([s.mean(dim=(2, 3)) for s in stages], dim=1) + attention.stage_embedding
    h = attention.norm_attn(tokens)
    tokens = tokens + attention.attn(h, h, h)[0]
    tokens = tokens + attention.ffn(attention.norm_ffn(tokens))
    assert torch.allclose(context, tokens.mean(dim=1), atol=1e-6)
    # one value per stage map: the maps' spatial arrangement does not matter, their mean does
    shuffled = [s.flatten(2)[..., torch.randperm(s[0, 0].numel())].reshape(s.shape) for s in stages]
    assert torch.allclose(attention(shuffled)[0], context, atol=1e-5)
    _grad_check(attention, context.square().mean())
    attention.eval()
    assert torch.allclose(attention([s[1:] for s in stages])[0], attention(stages)[0][1:], atol=1e-6)


def test_gated_kernel_update_follows_ldnets_head_updater():
    from gpfuse.fusion.kernel import GatedKernelUpdate

    torch.manual_seed(0)
    update = GatedKernelUpdate(D, feat_dim=8)
    for norm in (update.descriptor_gate_norm, update.kernel_gate_norm, update.descriptor_norm, update.kernel_norm):
        torch.nn.init.normal_(norm.weight)  # LayerNorm's affine away from (1, 0), so swapped norms show
        torch.nn.init.normal_(norm.bias)
    kernel, descriptor = torch.randn(2, 3, D), torch.randn(2, 3, D)
    new, gates = update(kernel, descriptor, return_gate=True)
    assert new.shape == (2, 3, D) and gates.shape == (2, 3, 2, 8)
    assert torch.equal(new, update(kernel, descriptor))
    d_in, d_out = update.descriptor_proj(descriptor)[..., :8], update.descriptor_proj(descriptor)[..., 8:]
    k_in, k_out = update.kernel_proj(kernel)[..., :8], update.kernel_proj(kernel)[..., 8:]
    g_d = torch.sigmoid(update.descriptor_gate_norm(update.descriptor_gate(d_in * k_in)))
    g_k = torch.sigmoid(update.kernel_gate_norm(update.kernel_gate(d_in * k_in)))
    mixed = g_d * update.descriptor_norm(d_out) + g_k * update.kernel_norm(k_out)
    linear, norm = update.out[0], update.out[1]  # Linear, LayerNorm, ReLU
    assert torch.allclose(
        new, torch.relu(torch.nn.functional.layer_norm(linear(mixed), (D,), norm.weight, norm.bias)), atol=1e-6
    )
    assert torch.allclose(gates[..., 0, :], g_k, atol=1e-6) and torch.allclose(gates[..., 1, :], g_d, atol=1e-6)
    assert (new >= 0).all() and (new == 0).any()  # the ReLU at the end
    _grad_check(update, new.square().mean() + gates.square().mean())


def test_gated_kernel_update_gate_width_defaults_to_the_kernel_size():
    from gpfuse.fusion.kernel import GatedKernelUpdate

    update = GatedKernelUpdate(D)
    assert update.feat_dim == D and update.kernel_gate.in_features == D


def test_bottleneck_adapter_starts_as_the_identity_and_adds_its_bottleneck():
    from gpfuse.fusion.in_lm_step import BottleneckAdapter

    torch.manual_seed(0)
    adapter = BottleneckAdapter(D, size=4)
    x = torch.randn(2, 5, D)
    assert torch.equal(adapter(x), x) and adapter.down.out_features == 4
    _randomise(adapter.up)
    expected = x + adapter.up(torch.nn.functional.gelu(adapter.down(x)))
    assert torch.allclose(adapter(x), expected, atol=1e-6)


def _step(**options):
    from gpfuse.fusion.in_lm_step import GatedCrossModalBlock

    torch.manual_seed(0)
    return GatedCrossModalBlock(D, num_heads=2, dropout=0.0, **options)


def test_pgf_step_arbitrates_between_text_and_cross_attention():
    step = _step(adapter=4)
    _randomise(step.adapter.up)
    text, bank = torch.randn(2, 5, D), torch.randn(2, 7, D)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    out, gate = step(text, bank, mask, return_gate=True)
    cross = step.cross(text, bank, mask)
    g = torch.sigmoid(step.gate.w(torch.cat([text, cross], dim=-1)))
    assert torch.allclose(gate, g, atol=1e-6)
    assert torch.allclose(out, step.adapter(g * text + (1 - g) * cross), atol=1e-6)
    assert torch.equal(out, step(text, bank, mask))
    padded = bank.clone()
    padded[1, 4:] = 50.0
    assert torch.allclose(step(text, padded, mask), out, atol=1e-5)  # masked bank steps are not read
    _grad_check(step, out.square().mean())
    step.eval()
    assert torch.allclose(step(text[1:], bank[1:], mask[1:]), step(text, bank, mask)[1:], atol=1e-5)


def test_pgf_step_gate_bias_sets_where_the_gate_starts():
    step = _step(gate_bias=3.0)
    assert torch.equal(step.gate.w.bias, torch.full((D,), 3.0))


def test_pgf_step_ablations_mean_of_the_bank_plain_sum_and_no_adapter():
    step = _step(gate="sum", cross_attention=False, adapter=0)
    assert step.cross is None and isinstance(step.adapter, torch.nn.Identity)
    text, bank = torch.randn(2, 5, D), torch.randn(2, 7, D)
    mask = torch.tensor([[True] * 7, [True, True, False, False, False, False, False]])
    out, gate = step(text, bank, mask, return_gate=True)
    mean = torch.stack([bank[0].mean(0), bank[1, :2].mean(0)])  # each sample's real steps only
    assert gate is None and torch.allclose(out, text + mean[:, None], atol=1e-6)


def _heads(module: torch.nn.Module) -> list[int]:
    return [m.num_heads for m in module.modules() if hasattr(m, "num_heads") and isinstance(m.num_heads, int)]


def _dropouts(module: torch.nn.Module) -> set[float]:
    nn = torch.nn
    return {m.p for m in module.modules() if isinstance(m, nn.Dropout)} | {
        float(m.dropout) for m in module.modules() if isinstance(m, nn.MultiheadAttention | DownsampledAttention)
    }


def _widths(module: torch.nn.Module) -> set[int]:
    return {m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear)}


def test_the_blocks_defaults_are_the_papers_settings():
    """Built with their defaults, the blocks have the settings their docstrings give (the papers' or their
    public code's); a model config that leaves an option out gets these."""
    from gpfuse.fusion.bifusion import BiFusionBlock
    from gpfuse.fusion.encoder_attention import EncoderAttention
    from gpfuse.fusion.gates import GatedArbitration
    from gpfuse.fusion.image_gated_layer import GatedProgressiveLayer, gated_progressive_stack
    from gpfuse.fusion.in_lm_step import BottleneckAdapter, GatedCrossModalBlock

    cross = CrossAttention(64)
    assert _heads(cross) == [4] and _dropouts(cross) == {0.0} and isinstance(cross.norm, torch.nn.LayerNorm)
    sym = SymmetricCrossAttention(64)  # GRF: 4 layers, 4 heads, FFN 256, dropout 0.1
    assert _heads(sym) == [4] * 16 and _dropouts(sym) == {0.1} and _widths(sym) == {64, 256}
    down = DownsampledAttention(64)
    assert down.num_heads == 8 and down.dropout == 0.0 and _widths(down) == {64}
    two_way = TwoWayAttention(64)
    assert _heads(two_way) == [4, 4, 4] and _widths(two_way) == {64, 512}
    layer = GatedProgressiveLayer(64)  # GPF-Net: 8 heads, FFN 2048, dropout 0.1, post-LN
    assert _heads(layer) == [8] and _dropouts(layer) == {0.1} and _widths(layer) == {64, 2048}
    assert not layer.norm_first and isinstance(layer.norm_attn, torch.nn.LayerNorm) and layer.attn.batch_first
    assert isinstance(layer.ffn[-1], torch.nn.Dropout)  # dropout after the FFN's output too
    stack = gated_progressive_stack(64)  # 4 layers sharing one attention and one FFN, as GPF-Net's code
    assert len(stack.blocks) == 4 and stack.blocks[0].attn is stack.blocks[3].attn
    assert stack.blocks[0].ffn is stack.blocks[3].ffn and stack.blocks[0].gate is not stack.blocks[3].gate
    assert _dropouts(stack) == {0.1} and isinstance(stack.blocks[0].ffn[-1], torch.nn.Dropout)
    assert not stack.blocks[0].norm_first and stack.blocks[0].attn.batch_first
    bifusion = BiFusionBlock(64, text_dim=48)  # BiPVL-Seg / SAM: 2 two-way blocks, 8 heads, MLP 2048, rate 2
    assert len(bifusion.blocks) == 2 and _heads(bifusion) == [8] * 6 and bifusion.text_out is not None
    assert _widths(bifusion) == {32, 48, 64, 2048}  # 32: the cross-attentions at 64 // 2 channels
    encoder = EncoderAttention(64)  # EA-DK after LDNet: 5 stages, 4 heads, FFN 2x
    assert encoder.stage_embedding.shape == (5, 64) and _heads(encoder) == [4] and _widths(encoder) == {64, 128}
    step = GatedCrossModalBlock(64)  # PGF-Net: 8 heads, arbitration gate from 0.5, adapter 64, dropout 0.1
    assert _heads(step) == [8] and _dropouts(step) == {0.1} and not step.cross.residual
    assert isinstance(step.gate, GatedArbitration) and torch.equal(step.gate.w.bias, torch.zeros(64))
    assert step.adapter.down.out_features == 64 and BottleneckAdapter(64).down.out_features == 64
    assert torch.equal(GatedArbitration(8).w.bias, torch.zeros(8))


def test_pgf_step_cross_attention_has_no_residual_of_the_text():
    """H_cross is what the text reads from the bank, not the text plus it: with one real bank step every token
    reads the same value."""
    step = _step(adapter=0, gate="sum")
    text, bank = torch.randn(1, 4, D), torch.randn(1, 3, D)
    cross = step.cross(text, bank, torch.tensor([[True, False, False]]))
    assert torch.allclose(cross, cross[:, :1].expand_as(cross), atol=1e-6)


def test_the_kernel_update_keeps_the_gate_axis_before_the_features_with_more_leading_axes():
    from gpfuse.fusion.kernel import GatedKernelUpdate

    update = GatedKernelUpdate(D, feat_dim=8)
    new, gates = update(torch.randn(2, 3, 4, D), torch.randn(2, 3, 4, D), return_gate=True)
    assert new.shape == (2, 3, 4, D) and gates.shape == (2, 3, 4, 2, 8)


def test_the_grf_block_defaults_and_its_gate_dropout():
    """GRF's block: a 4-layer, 4-head symmetric cross-attention (FFN 256, dropout 0.1) and a Gated Fusion Unit
    with the same dropout; another gate gets no dropout option."""
    from gpfuse.fusion.gates import GatedFusionUnit

    block = build_fusion("grf_block", dim=64)
    assert _heads(block.cross) == [4] * 16 and _widths(block.cross) == {64, 256} and _dropouts(block.cross) == {0.1}
    assert isinstance(block.gate, GatedFusionUnit) and block.gate.dropout.p == 0.1
    assert build_fusion("grf_block", dim=64, dropout=0.3).gate.dropout.p == 0.3
    assert build_fusion("grf_block", dim=64, gate="image_gate").gate is not None  # takes no dropout: not given one


@pytest.mark.parametrize("spec", [None, "grf_block", {"dim": 16}])
def test_a_stack_block_without_a_name_is_refused_with_what_was_given(spec):
    with pytest.raises(
        ValueError, match=r"a stack's 'block' must be a mapping with a 'name', got " + re.escape(repr(spec))
    ):
        build_fusion("recursive", order=["a", "b"], block=spec)
