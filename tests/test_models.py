from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis.params import count_macs
from toolkit.errors import UnknownArchitectureError
from toolkit.models import architecture_names, build_model, create_model, get_architecture
from toolkit.models.resnet import BasicBlock

ARCHS = architecture_names()

# The exact counts of paper-spec.md: pinned here independently of the registry's own field.
PAPER_COUNTS = {
    "baseline-cnn": 391_946,
    "mini-resnet": 2_798_698,
    "resnet18": 11_173_962,
    "resnet18-noskip": 11_000_138,
}


def test_registry_holds_the_four_paper_models():
    assert list(PAPER_COUNTS) == ARCHS


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_count_matches_the_paper(name: str):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PAPER_COUNTS[name]
    assert get_architecture(name).paper_params == PAPER_COUNTS[name]


@pytest.mark.parametrize("name", ARCHS)
def test_forward_and_backward(name: str):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for layer in model.weight_layers():
        grad = layer.module.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, layer.name


@pytest.mark.parametrize("name", ARCHS)
def test_forward_is_features_then_head(name: str):
    model = create_model(name).eval()
    x = torch.randn(3, 3, 32, 32)
    features = model.forward_features(x)
    assert features.ndim == 4 and features.shape[1] == model.num_features
    torch.testing.assert_close(model.forward_head(features), model(x))


@pytest.mark.parametrize("name", ARCHS)
def test_weight_layers_in_depth_order_with_stable_names(name: str):
    model = create_model(name)
    layers = model.weight_layers()
    names = [layer.name for layer in layers]
    assert len(set(names)) == len(names)
    # The names are state_dict paths, so a rebuilt model has the same ones.
    assert [layer.name for layer in create_model(name).weight_layers()] == names
    state = model.state_dict()
    assert all(f"{n}.weight" in state for n in names)
    assert layers[0].depth == 1 and layers[0].kind == "conv"
    assert layers[-1].name == "fc" and layers[-1].kind == "linear"
    depths = [layer.depth for layer in layers]
    assert depths == sorted(depths)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(layers) == convs + 1
    assert sum(layer.params for layer in layers) <= sum(p.numel() for p in model.parameters())


def test_resnet18_depth_is_eighteen():
    main_path = [
        layer for layer in create_model("resnet18").weight_layers() if layer.kind != "shortcut"
    ]
    assert len(main_path) == 18 and main_path[-1].depth == 18


def test_noskip_model_has_no_shortcut_path():
    plain, residual = create_model("resnet18-noskip"), create_model("resnet18")
    assert not any("shortcut" in name for name, _ in plain.named_modules())
    assert any("shortcut" in name for name, _ in residual.named_modules())
    # Behaviour, not names: with every block's last BN zeroed, a residual network still
    # passes its stem features through the identities; a plain one outputs zeros.
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, residual):
        model.eval()
        for block in model.modules():
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)
                nn.init.zeros_(block.bn2.bias)
    with torch.no_grad():
        assert plain.forward_features(x).abs().max() == 0
        assert residual.forward_features(x).abs().max() > 0


def test_init_is_kaiming_for_convs_and_unit_batchnorm():
    model = create_model("resnet18")
    conv = model.stages[3][1].conv2  # 512 -> 512, fan_out = 512 * 9
    expected_std = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.02
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.mark.parametrize("spelling", ["resnet18_noskip", "RESNET18-NOSKIP", " resnet18-noskip "])
def test_alternative_spellings(spelling: str):
    assert get_architecture(spelling).name == "resnet18-noskip"


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(UnknownArchitectureError) as info:
        create_model("resnet50")
    message = str(info.value)
    assert "resnet50" in message
    assert all(name in message for name in ARCHS)


def test_model_rebuilds_from_stored_class_and_arguments():
    arch = get_architecture("mini-resnet")
    original = arch.build().eval()
    rebuilt = build_model(arch.model_class, dict(arch.kwargs))
    rebuilt.load_state_dict(original.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), original(x))


def test_macs_match_the_reference_figures():
    # paper-spec.md: CIFAR ResNet-18 costs about 0.56 GMACs; skip and no-skip differ by ~1%.
    skip = count_macs(create_model("resnet18"))
    plain = count_macs(create_model("resnet18-noskip"))
    assert abs(skip / 0.56e9 - 1) < 0.02
    assert 0.005 < skip / plain - 1 < 0.02
    # One conv by hand: the baseline's first conv is 32x32 positions x 32 filters x 27 taps.
    first = nn.Conv2d(3, 32, 3, padding=1)
    assert count_macs(first) == 32 * 32 * 32 * 27


@pytest.mark.parametrize(("name", "branches"), [("mini-resnet", 8), ("resnet18", 8)])
def test_zero_init_residual_makes_every_block_its_shortcut(name: str, branches: int):
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert model.zero_init_residual() == branches
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    x = torch.randn(2, blocks[1].conv1.in_channels, 8, 8)
    assert torch.equal(blocks[1](x), torch.relu(x))  # identity shortcut: the block is ReLU(x)


@pytest.mark.parametrize("name", ["baseline-cnn", "resnet18-noskip"])
def test_zero_init_residual_leaves_plain_networks_alone(name: str):
    torch.manual_seed(0)
    model = create_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.zero_init_residual() == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
