"""PyTorch interop against torch as the oracle: `from_torch` returns the
fixed-dimension classes, a single layer's own state dict loads, every module torch
constructs and runs round trips (a seeded random sweep), and two real-shaped
architectures (ResNet-18 and MobileNetV2 style) port end to end through
`load_torch_state_dict`."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch

import eqxconv


nn = torch.nn
# torch's note that its 'same' padding with an even kernel copies the input: about
# torch's speed, not the results compared here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def _batched_input(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """A batch of two inputs of `shape`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, *shape), dtype=np.float32)


def _torch_batched(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@eqx.filter_jit
def _eqx_batched(model: Any, x: Any) -> Any:
    return jax.vmap(model)(x)


def _assert_matches(model: Any, x: np.ndarray, expected: np.ndarray) -> None:
    out = np.asarray(_eqx_batched(model, jnp.asarray(x)))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _assert_same_parameters(a: Any, b: Any) -> None:
    """Two torch modules hold bit-identical parameters, in the same order."""
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert pa.dtype == pb.dtype and torch.equal(pa, pb)


# ----------------------------------------------------------------------------------
# from_torch returns the fixed-dimension classes
# ----------------------------------------------------------------------------------

FIXED_CLASSES: list[tuple[str, Callable[[], Any], type, tuple[int, ...]]] = [
    (
        "Conv1d",
        lambda: nn.Conv1d(2, 4, 3, padding_mode="reflect", padding=1),
        eqxconv.Conv1d,
        (2, 7),
    ),
    (
        "Conv2d",
        lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
        eqxconv.Conv2d,
        (2, 7, 6),
    ),
    (
        "Conv3d",
        lambda: nn.Conv3d(2, 3, 2, padding="same", bias=False),
        eqxconv.Conv3d,
        (2, 4, 5, 3),
    ),
    (
        "ConvTranspose1d",
        lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1),
        eqxconv.ConvTranspose1d,
        (2, 5),
    ),
    (
        "ConvTranspose2d",
        lambda: nn.ConvTranspose2d(4, 2, 3, 2, 1, 1, groups=2),
        eqxconv.ConvTranspose2d,
        (4, 3, 4),
    ),
    (
        "ConvTranspose3d",
        lambda: nn.ConvTranspose3d(2, 2, 2, bias=False),
        eqxconv.ConvTranspose3d,
        (2, 3, 2, 3),
    ),
    (
        "pad+Conv2d",
        lambda: nn.Sequential(nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(2, 2, 3)),
        eqxconv.Conv2d,
        (2, 5, 6),
    ),
    (
        "ConvTranspose1d+crop",
        lambda: nn.Sequential(nn.ConvTranspose1d(2, 2, 4, 2), nn.ZeroPad1d((-1, -2))),
        eqxconv.ConvTranspose1d,
        (2, 5),
    ),
]


@pytest.mark.parametrize(
    "make, cls, shape",
    [config[1:] for config in FIXED_CLASSES],
    ids=[config[0] for config in FIXED_CLASSES],
)
def test_from_torch_returns_fixed_dimension_class(make, cls, shape):
    torch.manual_seed(0)
    module = make()
    x = _batched_input(1, shape)
    expected = _torch_batched(module, x)
    layer = eqxconv.from_torch(module)
    assert type(layer) is cls
    _assert_matches(layer, x, expected)
    back = eqxconv.to_torch(layer)
    assert type(back) is type(module)
    _assert_same_parameters(back, module)
    again = eqxconv.from_torch(back)
    assert type(again) is cls
    _assert_matches(again, x, expected)


def test_patch_modules_keep_their_classes():
    unfold = nn.Unfold((2, 3), padding=1, stride=2)
    layer = eqxconv.from_torch(unfold)
    assert type(layer) is eqxconv.ExtractPatches
    assert type(eqxconv.to_torch(layer)) is nn.Unfold
    x = _batched_input(2, (3, 6, 7))
    out = np.asarray(_eqx_batched(layer, jnp.asarray(x)))
    np.testing.assert_array_equal(
        out.reshape(2, out.shape[1], -1), _torch_batched(unfold, x)
    )
    fold = eqxconv.from_torch(nn.Fold((6, 7), (2, 3), padding=1, stride=2))
    assert type(fold) is eqxconv.FoldPatches
    assert type(eqxconv.to_torch(fold)) is nn.Fold


# ----------------------------------------------------------------------------------
# One layer's own state dict (keys `weight`, `bias`) loads into one layer
# ----------------------------------------------------------------------------------

SINGLE_LAYERS: list[tuple[str, Callable[[], Any], Callable[[Any], Any], tuple]] = [
    (
        "Conv2d",
        lambda: nn.Conv2d(3, 4, 3),
        lambda key: eqxconv.Conv2d(3, 4, 3, key=key),
        (3, 6, 5),
    ),
    (
        "Conv1d-no-bias",
        lambda: nn.Conv1d(4, 4, 3, groups=2, bias=False),
        lambda key: eqxconv.Conv1d(4, 4, 3, groups=2, use_bias=False, key=key),
        (4, 7),
    ),
    (
        "ConvTranspose2d",
        lambda: nn.ConvTranspose2d(
            4, 6, 3, stride=2, padding=1, output_padding=1, groups=2
        ),
        lambda key: eqxconv.ConvTranspose2d(4, 6, 3, 2, 1, 1, groups=2, key=key),
        (4, 3, 4),
    ),
    (
        "ConvTranspose3d-no-bias",
        lambda: nn.ConvTranspose3d(2, 3, 2, bias=False),
        lambda key: eqxconv.ConvTranspose3d(2, 3, 2, use_bias=False, key=key),
        (2, 2, 3, 2),
    ),
]


@pytest.mark.parametrize(
    "make_torch, make_eqx, shape",
    [config[1:] for config in SINGLE_LAYERS],
    ids=[config[0] for config in SINGLE_LAYERS],
)
@pytest.mark.parametrize(
    "mapping", [None, {"": ""}, {"": lambda m: m}], ids=["order", "keystr", "where"]
)
def test_load_a_single_layers_own_state_dict(make_torch, make_eqx, shape, mapping):
    torch.manual_seed(1)
    module = make_torch()
    fresh = make_eqx(jr.key(0))
    layer = eqxconv.load_torch_state_dict(fresh, module.state_dict(), mapping)
    assert type(layer) is type(fresh)
    # Bit-identical to the layer from_torch builds, and the same outputs as torch.
    converted: Any = eqxconv.from_torch(module)
    assert np.array_equal(np.asarray(layer.weight), np.asarray(converted.weight))
    if module.bias is None:
        assert layer.bias is None
    else:
        assert np.array_equal(np.asarray(layer.bias), np.asarray(converted.bias))
    x = _batched_input(3, shape)
    _assert_matches(layer, x, _torch_batched(module, x))


def test_single_layer_state_dict_errors_name_the_bare_keys():
    layer = eqxconv.Conv2d(3, 4, 3, key=jr.key(0))
    state = nn.Conv2d(3, 4, 3).state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['weight'\] has shape .* root"):
        eqxconv.load_torch_state_dict(
            layer, {**state, "weight": torch.zeros(4, 3, 2, 2)}
        )
    with pytest.raises(KeyError, match="no key 'bias' for the Conv2d at the root"):
        eqxconv.load_torch_state_dict(layer, {"weight": state["weight"]})


# ----------------------------------------------------------------------------------
# Every module torch constructs and runs round trips
# ----------------------------------------------------------------------------------

TORCH_CLASSES = {
    "conv": {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d},
    "transpose": {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d},
}
EQX_CLASSES = {
    "conv": {1: eqxconv.Conv1d, 2: eqxconv.Conv2d, 3: eqxconv.Conv3d},
    "transpose": {
        1: eqxconv.ConvTranspose1d,
        2: eqxconv.ConvTranspose2d,
        3: eqxconv.ConvTranspose3d,
    },
}


def test_conv_transpose_whose_default_size_output_is_empty_round_trips():
    # The reported case: at input size 1 the output would be empty (2 * 1 - 2 = 0),
    # which torch only refuses when called on such an input.
    module = nn.ConvTranspose1d(2, 3, 1, stride=2, padding=1, output_padding=1)
    layer = eqxconv.from_torch(module)
    back = eqxconv.to_torch(layer)
    assert type(back) is nn.ConvTranspose1d
    assert (back.padding, back.output_padding) == ((1,), (1,))
    _assert_same_parameters(back, module)
    x = _batched_input(4, (2, 4))
    expected = _torch_batched(module, x)
    _assert_matches(layer, x, expected)
    np.testing.assert_array_equal(_torch_batched(back, x), expected)


def _ints(rng: np.random.Generator, n: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(low, high + 1, n))


def _draw(kind: str, rng: np.random.Generator, n: int) -> dict[str, Any]:
    """Random torch constructor arguments, not all of them valid."""
    groups = int(rng.integers(1, 4))
    arguments: dict[str, Any] = dict(
        in_channels=groups * int(rng.integers(1, 3)),
        out_channels=groups * int(rng.integers(1, 3)),
        kernel_size=_ints(rng, n, 1, 4),
        stride=_ints(rng, n, 1, 3),
        dilation=_ints(rng, n, 1, 2),
        groups=groups,
        bias=bool(rng.integers(2)),
    )
    if kind == "transpose":
        arguments["padding"] = _ints(rng, n, 0, 3)
        arguments["output_padding"] = tuple(
            int(rng.integers(max(s, d)))
            for s, d in zip(arguments["stride"], arguments["dilation"], strict=True)
        )
        return arguments
    choices: list[Any] = ["same", "valid", int(rng.integers(4)), _ints(rng, n, 0, 3)]
    arguments["padding"] = choices[int(rng.integers(len(choices)))]
    arguments["padding_mode"] = str(
        rng.choice(["zeros", "reflect", "replicate", "circular"])
    )
    return arguments


def _sweep(kind: str, count: int, seed: int) -> list[tuple]:
    """`count` seeded random configurations, `(kind, n, arguments, input shape)`,
    that torch both constructs and runs; those it refuses are drawn again."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(100 * count):
        n = int(rng.integers(1, 4))
        arguments = _draw(kind, rng, n)
        shape = (arguments["in_channels"], *_ints(rng, n, 1, 8))
        try:
            module = TORCH_CLASSES[kind][n](**arguments)
            with torch.no_grad():
                module(torch.zeros(1, *shape))
        except (RuntimeError, ValueError):
            continue
        found.append((kind, n, arguments, shape))
        if len(found) == count:
            return found
    raise AssertionError(f"torch ran only {len(found)} of the {kind} draws")


SWEEP = _sweep("conv", 24, seed=0) + _sweep("transpose", 24, seed=1)


@pytest.mark.parametrize(
    "config", SWEEP, ids=[f"{c[0]}{c[1]}d-{i}" for i, c in enumerate(SWEEP)]
)
def test_random_torch_modules_round_trip(config):
    kind, n, arguments, shape = config
    torch.manual_seed(0)
    module = TORCH_CLASSES[kind][n](**arguments)
    x = _batched_input(5, shape)
    expected = _torch_batched(module, x)
    layer = eqxconv.from_torch(module)
    assert type(layer) is EQX_CLASSES[kind][n]
    _assert_matches(layer, x, expected)
    back = eqxconv.to_torch(layer)
    assert type(back) is type(module)
    _assert_same_parameters(back, module)
    np.testing.assert_allclose(_torch_batched(back, x), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------
# Real architectures, ported through load_torch_state_dict
# ----------------------------------------------------------------------------------


def fold_batchnorm(state_dict: Any, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """An inference-time state dict with every BatchNorm folded into the convolution
    registered just before it (as in torchvision's models), which gains a bias: the
    Equinox twin then needs no normalisation layers. (The BatchNorm entries stay;
    their 1-d weights are no convolution's, so the loader passes over them.)"""
    state = {key: value.detach().numpy() for key, value in state_dict.items()}
    folded, conv = dict(state), None
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        if name == "weight" and value.ndim >= 3:
            conv = prefix
        elif name == "running_mean":
            variance = state[f"{prefix}.running_var"]
            scale = state[f"{prefix}.weight"] / np.sqrt(variance + eps)
            weight = state[f"{conv}.weight"]
            bias = state.get(f"{conv}.bias", np.zeros_like(value))
            per_channel = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            folded[f"{conv}.weight"] = weight * per_channel
            folded[f"{conv}.bias"] = state[f"{prefix}.bias"] + (bias - value) * scale
    return folded


def _randomise_batchnorm(model: Any, seed: int) -> Any:
    """Statistics and affine parameters far from the identity, so that a wrong fold
    cannot pass; the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.get_buffer("running_mean").normal_(0.0, 0.2, generator=generator)
                module.get_buffer("running_var").uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def _load_linear(model: Any, where: Callable, state: dict, prefix: str) -> Any:
    weight, bias = (jnp.asarray(state[f"{prefix}.{k}"]) for k in ("weight", "bias"))
    return eqx.tree_at(
        lambda m: (where(m).weight, where(m).bias), model, (weight, bias)
    )


def _conv_bn(cin: int, cout: int, *args: Any, **kwargs: Any) -> list:
    return [nn.Conv2d(cin, cout, *args, bias=False, **kwargs), nn.BatchNorm2d(cout)]


class TorchBasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, with its attribute names."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride, 1)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3, 1, 1)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class TorchResNet(nn.Module):
    """ResNet-18's shape (7x7/2 stem, max pool, four stages of two BasicBlocks,
    strided 1x1 downsampling), narrow."""

    def __init__(self, widths: tuple[int, ...], num_classes: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, widths[0], 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = [
                TorchBasicBlock(cin, width, stride),
                TorchBasicBlock(width, width, 1),
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = width
        self.stages = len(widths)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))


class EqxBasicBlock(eqx.Module):
    # Fields in the torch block's registration order, so the layers pair in order.
    conv1: eqxconv.Conv2d
    conv2: eqxconv.Conv2d
    downsample: eqxconv.Conv2d | None

    def __init__(self, cin: int, cout: int, stride: int, key: Any):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqxconv.Conv2d(cin, cout, 3, stride, 1, key=k1)
        self.conv2 = eqxconv.Conv2d(cout, cout, 3, 1, 1, key=k2)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = eqxconv.Conv2d(cin, cout, 1, stride, key=k3)

    def __call__(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))) + identity)


class EqxResNet(eqx.Module):
    stem: eqxconv.Conv2d
    pool: eqx.nn.MaxPool2d
    blocks: list[EqxBasicBlock]
    fc: eqx.nn.Linear

    def __init__(self, widths: tuple[int, ...], num_classes: int, key: Any):
        keys = iter(jr.split(key, 2 + 2 * len(widths)))
        self.stem = eqxconv.Conv2d(3, widths[0], 7, 2, 3, key=next(keys))
        self.pool = eqx.nn.MaxPool2d(3, 2, padding=1)
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(EqxBasicBlock(cin, width, 1 if i == 0 else 2, next(keys)))
            blocks.append(EqxBasicBlock(width, width, 1, next(keys)))
            cin = width
        self.blocks = blocks
        self.fc = eqx.nn.Linear(cin, num_classes, key=next(keys))

    def __call__(self, x):
        x = self.pool(jax.nn.relu(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((1, 2)))


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    layers = _conv_bn(cin, cout, kernel, stride, kernel // 2, groups=groups)
    return nn.Sequential(*layers, nn.ReLU6())


class TorchInvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: 1x1 expansion, 3x3 depthwise, linear 1x1
    projection, residual when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers.append(_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))
        layers.extend(_conv_bn(hidden, cout, 1))
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion, channels, blocks, first stride), MobileNetV2's table, narrow and short.
MOBILENET_SETTINGS = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2)]


def _mobilenet_blocks(stem: int) -> list[tuple[int, int, int, int]]:
    """Each block's (in, out, stride, expansion)."""
    blocks, cin = [], stem
    for expand, cout, count, stride in MOBILENET_SETTINGS:
        for i in range(count):
            blocks.append((cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return blocks


class TorchMobileNetV2(nn.Module):
    def __init__(self, stem: int, last: int, num_classes: int):
        super().__init__()
        blocks = [TorchInvertedResidual(*b) for b in _mobilenet_blocks(stem)]
        final = MOBILENET_SETTINGS[-1][1]
        self.features = nn.Sequential(
            _conv_bn_relu6(3, stem, 3, 2), *blocks, _conv_bn_relu6(final, last, 1)
        )
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class EqxInvertedResidual(eqx.Module):
    expand: eqxconv.Conv2d | None
    depthwise: eqxconv.Conv2d
    project: eqxconv.Conv2d
    residual: bool = eqx.field(static=True)

    def __init__(self, cin: int, cout: int, stride: int, expand: int, key: Any):
        k1, k2, k3 = jr.split(key, 3)
        hidden = cin * expand
        self.expand = None if expand == 1 else eqxconv.Conv2d(cin, hidden, 1, key=k1)
        self.depthwise = eqxconv.Conv2d(
            hidden, hidden, 3, stride, 1, groups=hidden, key=k2
        )
        self.project = eqxconv.Conv2d(hidden, cout, 1, key=k3)
        self.residual = stride == 1 and cin == cout

    def __call__(self, x):
        out = x if self.expand is None else jax.nn.relu6(self.expand(x))
        out = self.project(jax.nn.relu6(self.depthwise(out)))
        return x + out if self.residual else out


class EqxMobileNetV2(eqx.Module):
    stem: eqxconv.Conv2d
    blocks: list[EqxInvertedResidual]
    head: eqxconv.Conv2d
    classifier: eqx.nn.Linear

    def __init__(self, stem: int, last: int, num_classes: int, key: Any):
        specs = _mobilenet_blocks(stem)
        keys = iter(jr.split(key, len(specs) + 3))
        self.stem = eqxconv.Conv2d(3, stem, 3, 2, 1, key=next(keys))
        self.blocks = [EqxInvertedResidual(*spec, key=next(keys)) for spec in specs]
        final = MOBILENET_SETTINGS[-1][1]
        self.head = eqxconv.Conv2d(final, last, 1, key=next(keys))
        self.classifier = eqx.nn.Linear(last, num_classes, key=next(keys))

    def __call__(self, x):
        x = jax.nn.relu6(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.classifier(jax.nn.relu6(self.head(x)).mean((1, 2)))


ARCHITECTURES = {
    "resnet18": (
        lambda: TorchResNet((8, 16, 24, 32), 10),
        lambda key: EqxResNet((8, 16, 24, 32), 10, key),
        lambda m: m.fc,
        "fc",
    ),
    "mobilenet_v2": (
        lambda: TorchMobileNetV2(8, 48, 10),
        lambda key: EqxMobileNetV2(8, 48, 10, key),
        lambda m: m.classifier,
        "classifier",
    ),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_port_architecture_through_state_dict(name):
    make_torch, make_eqx, head, head_prefix = ARCHITECTURES[name]
    torch.manual_seed(2)
    torch_model = _randomise_batchnorm(make_torch(), seed=3)
    x = _batched_input(6, (3, 32, 32))
    expected = _torch_batched(torch_model, x)

    state = fold_batchnorm(torch_model.state_dict())
    # Every parameter is overwritten, so the twin is built abstractly, without the
    # cost of its random initialisation. The convolutions pair in order; the
    # classifier is filled by hand.
    skeleton = eqx.filter_eval_shape(make_eqx, jr.key(0))
    model = eqxconv.load_torch_state_dict(skeleton, state)
    model = _load_linear(model, head, state, head_prefix)

    out = np.asarray(_eqx_batched(model, jnp.asarray(x)))
    assert out.shape == expected.shape == (2, 10)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * scale)
