"""Port a small PyTorch CNN to JAX with eqxconv, two ways, and back.

The torch model is a tiny encoder-decoder: a stem convolution with reflect padding, a
strided grouped convolution, a depthwise convolution with `padding='same'`, and a
grouped transposed convolution with `output_padding` that upsamples back. It is
ported

1. layer by layer with `eqxconv.from_torch`, and
2. as a whole, by building the same architecture in Equinox and filling it from the
   torch `state_dict` with `eqxconv.load_torch_state_dict`,

and the first layer is exported back with `eqxconv.to_torch`. The script prints the
max abs difference between the torch and JAX outputs for a batch of images (with
`jax.vmap`: eqxconv layers take unbatched inputs) and asserts it is small.

Run: `python examples/port_from_torch.py` (needs `pip install torch`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import torch
from jaxtyping import Array, Float, PRNGKeyArray

import eqxconv


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1, padding_mode="reflect")
        self.down = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4)
        self.mix = torch.nn.Conv2d(32, 32, 5, padding="same", groups=32, bias=False)
        self.up = torch.nn.ConvTranspose2d(
            32, 8, 3, stride=2, padding=1, output_padding=1, groups=2
        )

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x))
        x = torch.relu(self.mix(x))
        return self.up(x)


class JaxNet(eqx.Module):
    """The same architecture in Equinox; the fields mirror the torch module's."""

    stem: eqxconv.Conv2d
    down: eqxconv.Conv2d
    mix: eqxconv.Conv2d
    up: eqxconv.ConvTranspose2d

    def __init__(self, key: PRNGKeyArray):
        keys = jr.split(key, 4)
        self.stem = eqxconv.Conv2d(
            3, 16, 3, padding=1, padding_mode="REFLECT", key=keys[0]
        )
        self.down = eqxconv.Conv2d(
            16, 32, 3, stride=2, padding=1, groups=4, key=keys[1]
        )
        # PyTorch's 'same' (stride 1) is eqxconv's 'SAME'.
        self.mix = eqxconv.Conv2d(
            32, 32, 5, padding="SAME", groups=32, use_bias=False, key=keys[2]
        )
        # `padding` and `output_padding` mean what they mean in PyTorch; only the
        # weight's layout differs, which the loader converts.
        self.up = eqxconv.ConvTranspose2d(
            32, 8, 3, stride=2, padding=1, output_padding=1, groups=2, key=keys[3]
        )

    def __call__(self, x: Float[Array, "3 h w"]) -> Float[Array, "8 h w"]:
        x = jax.nn.relu(self.stem(x))
        x = jax.nn.relu(self.down(x))
        x = jax.nn.relu(self.mix(x))
        return self.up(x)


def from_layers(torch_net: TorchNet) -> JaxNet:
    """Way 1: convert each torch layer with `from_torch` and put them into a JaxNet
    (built here only for its structure) by tree surgery."""
    skeleton = JaxNet(jr.key(0))
    ported = tuple(
        eqxconv.from_torch(layer)
        for layer in (torch_net.stem, torch_net.down, torch_net.mix, torch_net.up)
    )
    return eqx.tree_at(lambda m: (m.stem, m.down, m.mix, m.up), skeleton, ported)


def main() -> float:
    torch.manual_seed(0)
    torch_net = TorchNet().eval()
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), np.float32)
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(images)).numpy()

    by_layer = from_layers(torch_net)
    # Way 2: fill a freshly initialised JaxNet from the state_dict. The layers pair
    # up in order; pass a mapping {torch prefix: layer} when they don't.
    by_state_dict = eqxconv.load_torch_state_dict(
        JaxNet(jr.key(1)), torch_net.state_dict()
    )

    apply = eqx.filter_jit(jax.vmap(lambda model, x: model(x), in_axes=(None, 0)))
    worst = 0.0
    for name, model in [("from_torch", by_layer), ("state_dict", by_state_dict)]:
        out = np.asarray(apply(model, jnp.asarray(images)))
        assert out.shape == expected.shape, (out.shape, expected.shape)
        difference = float(np.max(np.abs(out - expected)))
        print(f"{name:>10}: output {out.shape}, max abs difference {difference:.2e}")
        worst = max(worst, difference)

    # And back: an eqxconv layer as a torch module, with bit-identical weights.
    stem = eqxconv.to_torch(by_layer.stem)
    assert torch.equal(stem.weight, torch_net.stem.weight)
    print(f"   to_torch: {stem}")

    assert worst < 1e-4, worst
    return worst


if __name__ == "__main__":
    main()
