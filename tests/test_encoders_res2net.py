"""Res2Net-50 26w x 4s encoders: the official key names and shapes (v1 ``res2net.py`` / timm, v1b
``res2net_v1b.py``), strict loading, feature shapes, stems with other channel counts, block semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gpfuse.encoders.image import IMAGE_ENCODERS, get_image_encoder, global_pool, load_image_weights
from gpfuse.encoders.res2net import Bottle2neck, Res2Net50Encoder, Res2Net50V1bEncoder

V1, V1B = "res2net50_26w_4s", "res2net50_v1b_26w_4s"


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def res2net50_keys(v1b: bool) -> list[tuple[str, tuple[int, ...]]]:
    """``state_dict()`` (key, shape) list, in order, of Res2Net-50 26w x 4s, from the rules of the official
    ``Res2Net`` / ``Bottle2neck`` (Res2Net/Res2Net-PretrainedModels ``res2net.py`` = timm ``res2net50_26w_4s``;
    ``res2net_v1b.py``): width = floor(planes * 26 / 64), scale 4, ``convs``/``bns`` 0..2 registered before
    ``conv3``, a downsample on the first block of each stage (v1: ``0`` conv s, ``1`` BN; v1b: ``0`` AvgPool,
    ``1`` conv, ``2`` BN); v1b stem ``conv1`` = Sequential(conv 3->32 s2, BN, ReLU, conv 32->32, BN, ReLU,
    conv 32->64)."""
    if v1b:
        keys = [
            ("conv1.0.weight", (32, 3, 3, 3)),
            *_bn("conv1.1", 32),
            ("conv1.3.weight", (32, 32, 3, 3)),
            *_bn("conv1.4", 32),
            ("conv1.6.weight", (64, 32, 3, 3)),
        ]
    else:
        keys = [("conv1.weight", (64, 3, 7, 7))]
    keys += _bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        width, out = planes * 26 // 64, planes * 4
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            keys += [(f"{p}.conv1.weight", (4 * width, inplanes, 1, 1)), *_bn(f"{p}.bn1", 4 * width)]
            keys += [(f"{p}.convs.{i}.weight", (width, width, 3, 3)) for i in range(3)]
            keys += [k for i in range(3) for k in _bn(f"{p}.bns.{i}", width)]
            keys += [(f"{p}.conv3.weight", (out, 4 * width, 1, 1)), *_bn(f"{p}.bn3", out)]
            if b == 0:
                d = 1 if v1b else 0
                keys += [(f"{p}.downsample.{d}.weight", (out, inplanes, 1, 1)), *_bn(f"{p}.downsample.{d + 1}", out)]
            inplanes = out
    return [*keys, ("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]


KEYS = {V1: res2net50_keys(v1b=False), V1B: res2net50_keys(v1b=True)}
# published: 25.70M (res2net50_26w_4s) and 25.72M (Res2Net-v1b-50), Res2Net-PretrainedModels README / timm card
N_PARAMS = {V1: 25_699_120, V1B: 25_718_352}
N_KEYS = {V1: 512, V1B: 524}


def _random_state(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(11) if not s else torch.randn(s) for k, s in KEYS[name]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, object]]]:
    """Per variant: a random state dict with the official keys, saved as .pth and .safetensors."""
    root, out = tmp_path_factory.mktemp("res2net"), {}
    for name in (V1, V1B):
        state = _random_state(name)
        pth, st = root / f"{name}.pth", root / f"{name}.safetensors"
        torch.save(state, pth)
        save_file(state, str(st))
        out[name] = (state, {".pth": pth, ".safetensors": st})
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: get_image_encoder(name).eval() for name in (V1, V1B)}


def test_published_keys_and_shapes():
    shapes = {name: dict(keys) for name, keys in KEYS.items()}
    for name in (V1, V1B):
        assert len(KEYS[name]) == len(shapes[name]) == N_KEYS[name]
        s = shapes[name]
        assert s["layer1.0.convs.0.weight"] == (26, 26, 3, 3)
        assert s["layer1.0.conv1.weight"] == (104, 64, 1, 1)
        assert s["layer2.0.conv1.weight"] == (208, 256, 1, 1)
        assert s["layer3.0.convs.2.weight"] == (104, 104, 3, 3)
        assert s["layer4.0.bns.2.running_var"] == (208,)
        assert s["layer4.2.conv3.weight"] == (2048, 832, 1, 1)
        assert s["bn1.weight"] == (64,) and s["fc.weight"] == (1000, 2048)
        params = [sh for k, sh in KEYS[name] if "running" not in k and "num_batches" not in k]
        assert sum(math.prod(sh) for sh in params) == N_PARAMS[name]
    v1, v1b = shapes[V1], shapes[V1B]
    assert v1["conv1.weight"] == (64, 3, 7, 7) and "conv1.0.weight" not in v1
    assert v1["layer1.0.downsample.0.weight"] == (256, 64, 1, 1) and "layer1.0.downsample.2.weight" not in v1
    assert v1["layer2.0.downsample.1.running_mean"] == (512,)
    assert v1b["conv1.0.weight"] == (32, 3, 3, 3) and v1b["conv1.3.weight"] == (32, 32, 3, 3)
    assert v1b["conv1.6.weight"] == (64, 32, 3, 3) and v1b["conv1.4.running_var"] == (32,)
    assert "conv1.weight" not in v1b and "conv1.2.weight" not in v1b and "conv1.5.weight" not in v1b
    assert v1b["layer1.0.downsample.1.weight"] == (256, 64, 1, 1) and "layer1.0.downsample.0.weight" not in v1b
    assert v1b["layer2.0.downsample.2.running_mean"] == (512,)
    assert v1b["layer4.0.downsample.1.weight"] == (2048, 1024, 1, 1)


@pytest.mark.parametrize("name, cls", [(V1, Res2Net50Encoder), (V1B, Res2Net50V1bEncoder)])
def test_state_dict_is_the_official_one(models, name, cls):
    model = models[name]
    assert IMAGE_ENCODERS[name][0] is cls and type(model) is cls
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == KEYS[name]
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS[name]
    first = model.get_submodule(cls.first_conv)
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == 3
    assert model.head_prefixes == ("fc.",) and model.input_mean == (0.485, 0.456, 0.406)
    assert model.out_channels == (3, 64, 256, 512, 1024, 2048) and model.feature_dim == 2048


@pytest.mark.parametrize("name", [V1, V1B])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_an_official_state_dict(files, name, suffix):
    state, paths = files[name]
    model = get_image_encoder(name, weights=paths[suffix])
    for key in ("layer1.0.convs.0.weight", "layer3.5.bns.2.running_var", "layer4.0.downsample.1.weight", "fc.bias"):
        assert torch.equal(model.state_dict()[key], state[key])
    first = "conv1.6.weight" if name == V1B else "conv1.weight"
    assert torch.equal(model.state_dict()[first], state[first])
    fresh = Res2Net50V1bEncoder() if name == V1B else Res2Net50Encoder()
    load_image_weights(fresh, paths[suffix])  # strict, straight from the file
    assert torch.equal(fresh.layer2[0].conv3.weight, state["layer2.0.conv3.weight"])


def test_wrong_key_or_shape_names_the_file(files, tmp_path):
    state, paths = files[V1B]
    bad = dict(state)
    bad["layer2.1.convs.1.weight"] = torch.randn(52, 52, 1, 1)
    bad["layer2.0.downsample.0.weight"] = torch.randn(512, 256, 1, 1)  # a v1 name in a v1b file
    path = tmp_path / "bad_res2net.pth"
    torch.save(bad, path)
    with pytest.raises(RuntimeError, match=r"bad_res2net\.pth") as err:
        get_image_encoder(V1B, weights=path)
    assert "layer2.1.convs.1.weight" in str(err.value) and "layer2.0.downsample.0.weight" in str(err.value)
    # the v1 release does not fit the v1b model (and vice versa): the error names the file and the stem keys
    with pytest.raises(RuntimeError, match=rf"{V1}\.safetensors.*missing keys.*conv1\.0\.weight"):
        get_image_encoder(V1B, weights=files[V1][1][".safetensors"])
    with pytest.raises(RuntimeError, match=rf"{V1B}\.pth.*missing keys.*'conv1\.weight'"):
        get_image_encoder(V1, weights=paths[".pth"])


@pytest.mark.parametrize("name, release", [(V1, "res2net50_26w_4s-06e79181"), (V1B, "res2net50_v1b_26w_4s-3cf99910")])
def test_imagenet_weights_are_not_shipped(name, release):
    with pytest.raises(FileNotFoundError, match=rf"not shipped.*local path.*\.pth.*\.safetensors.*{release}"):
        get_image_encoder(name, weights="imagenet")


def test_registry_lists_both_variants():
    with pytest.raises(KeyError, match=f"{V1}.*{V1B}"):
        get_image_encoder("res2net101")


@pytest.mark.parametrize("name", [V1, V1B])
@pytest.mark.parametrize("size", [(352, 352), (100, 130)])
def test_feature_shapes(models, name, size):
    model = models[name]
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    strides = (1, 2, 4, 8, 16, 32)
    assert [tuple(f.shape) for f in features] == [
        (1, c, math.ceil(size[0] / s), math.ceil(size[1] / s)) for c, s in zip(model.out_channels, strides)
    ]
    assert all(torch.isfinite(f).all() for f in features)
    assert global_pool(features).shape == (1, 2048)


@pytest.mark.parametrize("name", [V1, V1B])
def test_other_channel_counts(files, name):
    state, paths = files[name]
    first = Res2Net50V1bEncoder.first_conv if name == V1B else Res2Net50Encoder.first_conv
    file_weight = state[f"{first}.weight"]
    grey = get_image_encoder(name, weights=paths[".pth"], in_channels=1).eval()
    torch.testing.assert_close(grey.get_submodule(first).weight, file_weight.sum(1, keepdim=True))
    four = get_image_encoder(name, weights=paths[".safetensors"], in_channels=4).eval()
    torch.testing.assert_close(four.get_submodule(first).weight, file_weight[:, [0, 1, 2, 0]] * 0.75)
    assert torch.equal(four.layer3[2].convs[1].weight, state["layer3.2.convs.1.weight"])
    scratch = get_image_encoder(name, in_channels=4).eval()
    with torch.no_grad():
        for model, c in ((grey, 1), (four, 4), (scratch, 4)):
            features = model(torch.randn(1, c, 100, 130))
            assert model.out_channels[0] == c and features[0].shape[1] == c
            assert [tuple(f.shape[-2:]) for f in features[1:]] == [(50, 65), (25, 33), (13, 17), (7, 9), (4, 5)]


@pytest.mark.parametrize("cls", [Res2Net50Encoder, Res2Net50V1bEncoder])
def test_gradients_reach_every_parameter_after_drop_head(cls):
    model = cls().train()
    model.drop_head()
    assert model.fc is None and not any(n.startswith("fc.") for n, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="drop_head"):
        model.forward_logits(torch.zeros(1, 3, 64, 64))
    global_pool(model(torch.randn(2, 3, 64, 64))).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", [V1, V1B])
def test_eval_batch_independence(models, name):
    model = models[name]
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        both = model(x)
        alone = [model(x[i : i + 1]) for i in range(3)]
        logits = model.forward_logits(x)
    for level, f in enumerate(both):
        single = torch.cat([a[level] for a in alone])
        torch.testing.assert_close(f, single, rtol=1e-4, atol=1e-5 * single.abs().max().item())
    assert logits.shape == (3, 1000)


# ------------------------------------------------------------------------------------ block semantics
def _randomise_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.3)
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)


def _conv3_input(block: Bottle2neck, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = block.conv3.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    with torch.no_grad():
        block(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("avg_down", [False, True])
def test_stage_block_pools_the_last_split(avg_down):
    """First block of a stage (official ``stype='stage'``): no hierarchy, each split its own strided 3x3,
    the last split AvgPool2d(3, 2, padding=1) with the zero padding counted, then conv3 + downsample."""
    block = Bottle2neck(256, 128, stride=2, stage=True, avg_down=avg_down).eval()
    _randomise_bn(block)
    x = torch.randn(2, 256, 15, 17)  # odd sizes: the pool's padding and the ceil_mode downsample matter
    w = block.width
    assert w == 52
    with torch.no_grad():
        s = F.relu(block.bn1(block.conv1(x)))
        s0, s1, s2, s3 = s[:, :w], s[:, w : 2 * w], s[:, 2 * w : 3 * w], s[:, 3 * w :]
        y0 = F.relu(block.bns[0](block.convs[0](s0)))
        y1 = F.relu(block.bns[1](block.convs[1](s1)))
        y2 = F.relu(block.bns[2](block.convs[2](s2)))
        pooled = F.avg_pool2d(s3, 3, stride=2, padding=1, count_include_pad=True)
        assert not torch.allclose(pooled, F.avg_pool2d(s3, 3, stride=2, padding=1, count_include_pad=False))
        expected_in = torch.cat([y0, y1, y2, pooled], 1)
        if avg_down:  # v1b: AvgPool2d(2, 2, ceil_mode, count_include_pad=False) -> 1x1 conv -> BN
            conv, bn = block.downsample[1], block.downsample[2]
            short = bn(conv(F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)))
        else:
            conv, bn = block.downsample[0], block.downsample[1]
            short = bn(F.conv2d(x, conv.weight, stride=2))
        expected = F.relu(block.bn3(block.conv3(expected_in)) + short)
        got = block(x)
    assert expected_in.shape == (2, 208, 8, 9) and got.shape == (2, 512, 8, 9)
    torch.testing.assert_close(_conv3_input(block, x), expected_in)
    torch.testing.assert_close(got, expected)
    # changing convs[0] changes only the first split's output
    before = _conv3_input(block, x)
    block.convs[0].weight.data.mul_(-2.0)
    after = _conv3_input(block, x)
    assert not torch.allclose(before[:, :w], after[:, :w])
    assert torch.equal(before[:, w:], after[:, w:])


def test_normal_block_is_hierarchical():
    """Later blocks (``stype='normal'``): y0 = K0(x0), y_i = K_i(x_i + y_{i-1}), the last split passes through."""
    block = Bottle2neck(512, 128).eval()
    _randomise_bn(block)
    assert block.pool is None and block.downsample is None
    x = torch.randn(2, 512, 9, 11)
    w = block.width
    with torch.no_grad():
        s = F.relu(block.bn1(block.conv1(x)))
        s0, s1, s2, s3 = s[:, :w], s[:, w : 2 * w], s[:, 2 * w : 3 * w], s[:, 3 * w :]
        y0 = F.relu(block.bns[0](block.convs[0](s0)))
        y1 = F.relu(block.bns[1](block.convs[1](s1 + y0)))
        y2 = F.relu(block.bns[2](block.convs[2](s2 + y1)))
        expected_in = torch.cat([y0, y1, y2, s3], 1)
        expected = F.relu(block.bn3(block.conv3(expected_in)) + x)
        got = block(x)
    torch.testing.assert_close(_conv3_input(block, x), expected_in)
    torch.testing.assert_close(got, expected)
    # changing convs[0] propagates to splits 1 and 2 through the hierarchy, never to the passed-through split
    before = _conv3_input(block, x)
    block.convs[0].weight.data.mul_(-2.0)
    after = _conv3_input(block, x)
    for i in range(3):
        assert not torch.allclose(before[:, i * w : (i + 1) * w], after[:, i * w : (i + 1) * w]), i
    assert torch.equal(before[:, 3 * w :], after[:, 3 * w :])


def test_models_use_stage_blocks_first(models):
    for model in models.values():
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            assert stage[0].pool is not None and all(b.pool is None for b in stage[1:])
    v1b = models[V1B]
    assert [type(m).__name__ for m in v1b.layer2[0].downsample] == ["AvgPool2d", "Conv2d", "BatchNorm2d"]
    pool = v1b.layer2[0].downsample[0]
    assert pool.ceil_mode and not pool.count_include_pad and pool.kernel_size == pool.stride == 2
