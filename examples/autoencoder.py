"""A convolutional autoencoder: strided `Conv` down, `ConvTranspose` up.

`ConvTranspose` takes the arguments of the `Conv` it undoes, so the decoder mirrors
the encoder layer for layer. A stride-2 conv maps two input sizes onto one output
size; `output_padding` says which to go back to, and `out_spatial_shape` works it
out before anything runs. The script builds the model for an even (28) and an odd
(27) image size, asserts that the output shape equals the input's in both, and
trains each until the reconstruction loss has fallen well below its start.

Run: `python examples/autoencoder.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm import tqdm

import eqxconv


def make_images(key: PRNGKeyArray, count: int, size: int) -> Float[Array, "n 1 s s"]:
    """Images of three random Gaussian blobs each."""
    centre_key, width_key = jr.split(key)
    centres = jr.uniform(centre_key, (count, 3, 2, 1, 1), maxval=size)
    widths = jr.uniform(width_key, (count, 3, 1, 1), minval=1.5, maxval=4.0)
    grid = jnp.arange(size, dtype=jnp.float32)
    dist2 = (grid[:, None] - centres[:, :, 0]) ** 2 + (
        grid[None, :] - centres[:, :, 1]
    ) ** 2
    return jnp.exp(-dist2 / (2 * widths**2)).sum(axis=1, keepdims=True)


class AutoEncoder(eqx.Module):
    encoder: tuple[eqxconv.Conv2d, ...]
    decoder: tuple[eqxconv.ConvTranspose2d, ...]

    def __init__(self, size: int, key: PRNGKeyArray, channels=(1, 16, 32)):
        keys = jr.split(key, 2 * (len(channels) - 1))
        encoder, decoder, shape = [], [], (size, size)
        for i, (c_in, c_out) in enumerate(
            zip(channels[:-1], channels[1:], strict=True)
        ):
            down = eqxconv.Conv2d(c_in, c_out, 3, stride=2, padding=1, key=keys[2 * i])
            smaller = down.out_spatial_shape(shape)
            # Of the sizes the stride-2 conv maps onto `smaller`, go back to `shape`.
            output_padding = tuple(
                s - (2 * m - 1) for s, m in zip(shape, smaller, strict=True)
            )
            up = eqxconv.ConvTranspose2d(
                c_out,
                c_in,
                3,
                stride=2,
                padding=1,
                output_padding=output_padding,
                key=keys[2 * i + 1],
            )
            assert up.out_spatial_shape(smaller) == shape
            encoder.append(down)
            decoder.insert(0, up)
            shape = smaller
        self.encoder, self.decoder = tuple(encoder), tuple(decoder)

    def __call__(self, x: Float[Array, "1 s s"]) -> Float[Array, "1 s s"]:
        for layer in self.encoder:
            x = jax.nn.gelu(layer(x))
        for i, layer in enumerate(self.decoder):
            x = layer(x)
            x = x if i == len(self.decoder) - 1 else jax.nn.gelu(x)
        return x


def train(size: int, steps: int = 150, seed: int = 0) -> None:
    data_key, model_key = jr.split(jr.key(seed))
    images = make_images(data_key, 256, size)
    model = AutoEncoder(size, model_key)
    out = jax.eval_shape(model, images[0])  # the shapes, without running the model
    assert out.shape == images[0].shape, (out.shape, images[0].shape)
    optimiser = optax.adam(2e-3)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(model, x):
        return jnp.mean((jax.vmap(model)(x) - x) ** 2)

    @eqx.filter_jit
    def step(model, state, x):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    # Jitted: op-by-op over all 256 images would take seconds before the bar starts.
    evaluate = eqx.filter_jit(loss_fn)
    initial = float(evaluate(model, images))
    progress = tqdm(range(steps), desc=f"training at size {size}", unit="step")
    for i in progress:
        batch = images[(i * 32) % 224 : (i * 32) % 224 + 32]
        model, state, loss = step(model, state, batch)
        if i % 10 == 0:  # float() waits for the step: not on every one
            progress.set_postfix(loss=f"{float(loss):.4f}")
    final = float(evaluate(model, images))
    print(f"size {size}: output shape {out.shape}, mse {initial:.4f} -> {final:.4f}")
    assert final < 0.3 * initial, "the autoencoder did not learn"


if __name__ == "__main__":
    for size in (28, 27):
        train(size)
