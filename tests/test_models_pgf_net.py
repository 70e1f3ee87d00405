"""PGF-Net: fusion inside the backbone's layers, LoRA through peft, every ablation switch, bad backbones."""

from __future__ import annotations

import pytest
import torch

from conftest import train_losses
from gpfuse.encoders.text import load_text_backbone, tokenize
from gpfuse.fusion import build_fusion
from gpfuse.models import create_model

DIMS = {"audio": 6, "vision": 5}


def _batch(n=3, vision_len=4):
    texts = ["this movie was great", "boring and far too long", "um i think it was okay"][:n]
    ids, mask = tokenize(texts, "minilm", 12)
    g = torch.Generator().manual_seed(0)
    vision_mask = torch.ones(n, vision_len, dtype=torch.bool)
    vision_mask[0, 2:] = False
    return {
        "text_ids": torch.from_numpy(ids),
        "text_mask": torch.from_numpy(mask),
        "audio": torch.randn(n, 1, 6, generator=g),
        "audio_mask": torch.ones(n, 1, dtype=torch.bool),
        "vision": torch.randn(n, vision_len, 5, generator=g),
        "vision_mask": vision_mask,
        "label": torch.tensor([2.0, -2.0, 0.0][:n]),
    }


@pytest.fixture(scope="module")
def model():
    return create_model("pgf_net", input_dims=DIMS, fusion_heads=4)


def _trainable(net):
    return {n for n, p in net.named_parameters() if p.requires_grad}


def test_shapes_gates_and_what_trains(model):
    model.eval()
    out = model(_batch())
    assert out.score.shape == (3,) and len(out.gates) == 6 and out.gates[0].shape == (3, 384)
    assert ((out.gates[0] > 0) & (out.gates[0] < 1)).all() and out.gates[0].mean() > 0.9  # starts near "keep text"
    names = _trainable(model)
    backbone = {n for n in names if n.startswith("backbone.")}
    assert backbone and all(".lora_A." in n or ".lora_B." in n for n in backbone)  # LoRA only, the rest frozen
    assert {n.split(".")[0] for n in names - backbone} == {"projections", "fusion", "head"}


def test_every_trainable_parameter_gets_a_gradient(model):
    model.train()
    model.zero_grad()
    for name, p in model.named_parameters():
        # LoRA's B and the adapter's up-projection start at 0 (identity start), so LoRA's A and the adapter's
        # down-projection get no gradient until they move: move them first
        if "lora_B" in name or "adapter.up" in name:
            torch.nn.init.normal_(p, std=0.01)
    out = model(_batch())
    (out.score.square().mean() + sum(g.mean() for g in out.gates)).backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing


def test_eval_batch_independence_and_the_bank_matters(model):
    model.eval()
    batch = _batch()
    with torch.no_grad():
        together = model(batch).score
        alone = torch.cat([model({k: v[i : i + 1] for k, v in batch.items()}).score for i in range(3)])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        padded = dict(batch, vision=batch["vision"].clone())
        padded["vision"][0, 2:] = 1e3  # padded bank steps change nothing
        torch.testing.assert_close(model(padded).score, together, atol=1e-5, rtol=1e-5)
        louder = dict(batch, audio=batch["audio"] + 5.0)
        assert not torch.allclose(model(louder).score, together)
        text_only = model({"text_ids": batch["text_ids"], "text_mask": batch["text_mask"]})
    assert text_only.gates == [] and text_only.score.shape == (3,)  # no bank: the layers run unfused


def test_a_deep_copy_fuses_with_its_own_steps(model):
    import copy

    model.eval()
    batch = _batch()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        before = model(batch).score
        torch.testing.assert_close(twin(batch).score, before)
        for p in twin.fusion.parameters():
            p.add_(0.5)  # the copy's fusion steps only
        changed = twin(batch)
        assert len(changed.gates) == len(model(batch).gates) > 0  # the copy's hooks record into the copy
        assert not torch.allclose(changed.score, before, atol=1e-3)
        torch.testing.assert_close(model(batch).score, before)


def test_fusion_runs_after_the_backbone_layers_from_l0():
    """Hooks, not copies: on a 6-layer MiniLM with L0 = 6 (of 12), layers 0-2 give the plain backbone's states
    and every layer from 3 on is followed by fusion step ``i - 3``, as a plain backbone with those steps
    added by hand."""
    net = create_model("pgf_net", input_dims=DIMS, fusion_start=6, lora_rank=0, fusion_heads=4).eval()
    assert net.start == 3 and net.fusion.num_layers == 3
    batch = _batch(2)
    plain, _ = load_text_backbone("minilm")
    plain.eval()

    def capture(model):
        outs = []
        for layer in model.encoder.layer:
            layer.register_forward_hook(lambda m, a, out: outs.append(out[0] if isinstance(out, tuple) else out))
        return outs

    seen = capture(net.backbone)
    with torch.no_grad():
        net(batch)
        bank = net.bank(batch)
        unfused = capture(plain)
        plain(input_ids=batch["text_ids"], attention_mask=batch["text_mask"].long())
        for i, layer in enumerate(plain.encoder.layer[3:]):
            layer.register_forward_hook(lambda m, a, out, i=i: net.fusion.step(i, out, *bank)[0])
        by_hand = capture(plain)
        plain(input_ids=batch["text_ids"], attention_mask=batch["text_mask"].long())
    for i in range(3):
        torch.testing.assert_close(seen[i], unfused[i])
    assert not torch.allclose(seen[3], unfused[3], atol=1e-3)
    for i in range(6):
        torch.testing.assert_close(seen[i], by_hand[i], atol=1e-5, rtol=1e-5)


def test_l0_is_scaled_to_the_backbone_depth():
    starts = {l0: create_model("pgf_net", input_dims=DIMS, fusion_start=l0, lora_rank=0).start for l0 in (0, 3, 6)}
    assert starts == {0: 0, 3: 2, 6: 3}  # MiniLM has 6 layers: round(L0 * 6 / 12)
    with pytest.raises(ValueError, match="fusion_start"):
        create_model("pgf_net", input_dims=DIMS, fusion_start=12)


@pytest.mark.parametrize("rank", [16, 32, 64])
def test_lora_rank_sets_the_adapter_size(rank):
    net = create_model("pgf_net", input_dims=DIMS, lora_rank=rank)
    lora = sum(p.numel() for n, p in net.named_parameters() if "lora_" in n)
    assert lora == 6 * 3 * rank * (384 + 384)  # 6 layers x query/key/value x r (in + out)
    assert not any("lora_" in n for n, _ in create_model("pgf_net", input_dims=DIMS, lora_rank=0).named_parameters())


def test_ablation_switches_change_the_model_as_named(model):
    base = set(dict(model.named_parameters()))
    no_cross = create_model("pgf_net", input_dims=DIMS, cross_attention=False, fusion_heads=4)
    no_gate = create_model("pgf_net", input_dims=DIMS, gate="sum", fusion_heads=4)
    no_adapter = create_model("pgf_net", input_dims=DIMS, adapter=0, fusion_heads=4)
    for net, gone in ((no_cross, ".cross."), (no_gate, ".gate."), (no_adapter, ".adapter.")):
        names = set(dict(net.named_parameters()))
        assert names < base and all(gone in n for n in base - names) and not any(gone in n for n in names)
    no_gate.eval()
    assert no_gate(_batch()).gates == [None] * 6
    block = no_cross.fusion.blocks[0].eval()  # without cross-attention every token gets the bank's mean
    text, bank = torch.randn(2, 5, 384), torch.randn(2, 3, 384)
    _fused, gate = block(text, bank, torch.ones(2, 3, dtype=torch.bool), return_gate=True)
    g_expected = torch.sigmoid(block.gate.w(torch.cat([text, bank.mean(1, keepdim=True).expand_as(text)], -1)))
    torch.testing.assert_close(gate, g_expected)


def test_the_fusion_step_follows_the_paper():
    block = build_fusion("pgf_block", dim=8, num_heads=2, dropout=0.0, gate_bias=0.0).eval()
    with torch.no_grad():
        block.adapter.up.weight.normal_()  # leave the identity start to check the adapter's formula
    text, bank = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    cross = block.cross(text, bank, mask)
    g = torch.sigmoid(block.gate.w(torch.cat([text, cross], -1)))
    mixed = g * text + (1 - g) * cross
    expected = mixed + block.adapter.up(torch.nn.functional.gelu(block.adapter.down(mixed)))
    torch.testing.assert_close(block(text, bank, mask), expected)


def test_mismatched_modalities_are_named(model):
    batch = _batch()
    with pytest.raises(ValueError, match=r"vision: features \(3, 4, 5\) and mask \(3, 3\)"):
        model(dict(batch, vision_mask=batch["vision_mask"][:, :3]))
    with pytest.raises(ValueError, match=r"audio: features \(2, 1, 6\)"):
        model(dict(batch, audio=batch["audio"][:2], audio_mask=batch["audio_mask"][:2]))


def test_missing_or_non_bert_backbones_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_model("pgf_net", input_dims=DIMS, backbone=str(tmp_path / "nowhere"))
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"gpt2.*'gpt2' model has no encoder.layer"):
        create_model("pgf_net", input_dims=DIMS, backbone=str(tmp_path / "gpt2"))


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    net = create_model("pgf_net", input_dims=DIMS, fusion_heads=4, dropout=0.0)
    batch = _batch()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    losses = train_losses(optimizer, lambda: torch.nn.functional.l1_loss(net(batch).score, batch["label"]), 12)
    assert losses[-1] < 0.5 * losses[0]
