"""Train a small CNN built from eqxconv layers on a synthetic image task.

The task: 16x16 single-channel images holding a noisy bar, horizontal or vertical;
predict the orientation. The model mixes padding forms and modes (`'SAME'` with
`REFLECT`, strided `CIRCULAR`, a depthwise-grouped conv) and trains with
`eqx.filter_jit` and optax, the way a user's script would. It asserts that the
test accuracy passes 95%.

Run: `python examples/train_cnn.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

import eqxconv


SIZE = 16


def make_data(key: PRNGKeyArray, count: int) -> tuple[Array, Array]:
    """Images `(count, 1, SIZE, SIZE)` with a bar; label 1 where it is vertical."""
    label_key, position_key, noise_key = jr.split(key, 3)
    labels = jr.bernoulli(label_key, 0.5, (count,)).astype(jnp.int32)
    positions = jr.randint(position_key, (count,), 2, SIZE - 2)
    rows = jnp.arange(SIZE)[None, :, None]
    cols = jnp.arange(SIZE)[None, None, :]
    horizontal = (jnp.abs(rows - positions[:, None, None]) <= 1).astype(jnp.float32)
    vertical = (jnp.abs(cols - positions[:, None, None]) <= 1).astype(jnp.float32)
    bars = jnp.where(labels[:, None, None] == 1, vertical, horizontal)
    images = bars + 0.5 * jr.normal(noise_key, bars.shape)
    return images[:, None], labels


class CNN(eqx.Module):
    layers: tuple[eqxconv.Conv2d, ...]
    head: eqx.nn.Linear

    def __init__(self, key: PRNGKeyArray):
        keys = jr.split(key, 4)
        self.layers = (
            eqxconv.Conv2d(
                1, 8, 3, padding="SAME", padding_mode="REFLECT", key=keys[0]
            ),
            eqxconv.Conv2d(8, 16, 3, stride=2, padding="CIRCULAR", key=keys[1]),
            eqxconv.Conv2d(16, 16, 3, padding=1, groups=16, key=keys[2]),
        )
        self.head = eqx.nn.Linear(16, 2, key=keys[3])

    def __call__(self, x: Float[Array, "1 16 16"]) -> Float[Array, "2"]:
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def loss_fn(model: CNN, x: Float[Array, "b 1 16 16"], y: Int[Array, " b"]) -> Array:
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main(steps: int = 300, batch: int = 64, seed: int = 0) -> float:
    data_key, model_key, test_key = jr.split(jr.key(seed), 3)
    images, labels = make_data(data_key, 4096)
    model = CNN(model_key)
    optimiser = optax.adam(3e-3)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, state = optimiser.update(grads, state, model)
        return eqx.apply_updates(model, updates), state, loss

    for i in range(steps):
        start = (i * batch) % (len(images) - batch)
        x, y = images[start : start + batch], labels[start : start + batch]
        model, state, loss = step(model, state, x, y)
        if i % 100 == 0:
            print(f"step {i:4d}  loss {float(loss):.4f}")

    test_images, test_labels = make_data(test_key, 1024)
    logits = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(model, test_images)
    predictions = jnp.argmax(logits, axis=-1)
    accuracy = float(jnp.mean(predictions == test_labels))
    print(f"test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    accuracy = main()
    assert accuracy > 0.95, f"accuracy {accuracy:.3f} is below 0.95"
