"""The fusion core: shapes, masks, gradients, eval-mode batch independence, linear growth of GRF."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpfuse.fusion import BINARY_FUSIONS, build_fusion

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
