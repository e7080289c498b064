"""Train a small CNN of eqxconv layers on scikit-learn's bundled digits (no download).

8x8 grey-scale digits, 10 classes. The model mixes padding forms and modes (`'SAME'`
with `REFLECT`, a strided `CIRCULAR` conv, a depthwise conv) and trains with
`eqx.filter_jit` + optax, batched with `jax.vmap`, as a user's script would. It
prints the test accuracy and asserts it is at least 95%.

Run: `python examples/train_digits.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray
from sklearn.datasets import load_digits
from tqdm import tqdm

import eqxconv


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as `(N, 1, 8, 8)` float32 in [0, 1], split 80/20 at random."""
    pixels, targets = load_digits(return_X_y=True)
    images = (np.asarray(pixels) / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = np.asarray(targets).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    train, test = order[:split], order[split:]
    return images[train], labels[train], images[test], labels[test]


class CNN(eqx.Module):
    convs: tuple[eqxconv.Conv2d, ...]
    head: eqx.nn.Linear

    def __init__(self, key: PRNGKeyArray):
        keys = jr.split(key, 5)
        self.convs = (
            eqxconv.Conv2d(
                1, 32, 3, padding="SAME", padding_mode="REFLECT", key=keys[0]
            ),
            eqxconv.Conv2d(32, 32, 3, padding=1, groups=32, key=keys[1]),  # depthwise
            eqxconv.Conv2d(32, 64, 3, stride=2, padding="CIRCULAR", key=keys[2]),
            eqxconv.Conv2d(64, 64, 3, padding="SAME", key=keys[3]),
        )
        self.head = eqx.nn.Linear(64, 10, key=keys[4])

    def __call__(self, x: Float[Array, "1 8 8"]) -> Float[Array, "10"]:
        for conv in self.convs:
            x = jax.nn.gelu(conv(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def loss_fn(model: CNN, x: Float[Array, "b 1 8 8"], y: Int[Array, " b"]) -> Array:
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@eqx.filter_jit
def accuracy(model: CNN, x: Float[Array, "b 1 8 8"], y: Int[Array, " b"]) -> Array:
    return jnp.mean(jnp.argmax(jax.vmap(model)(x), axis=-1) == y)


def main(epochs: int = 30, batch: int = 64, seed: int = 0) -> float:
    x_train, y_train, x_test, y_test = load_data(seed)
    model = CNN(jr.key(seed))
    optimiser = optax.adamw(3e-3, weight_decay=1e-4)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, state = optimiser.update(grads, state, params)
        return eqx.apply_updates(model, updates), state, loss

    rng = np.random.default_rng(seed)
    steps_per_epoch = len(x_train) // batch
    progress = tqdm(range(epochs), desc="training", unit="epoch")
    for _ in progress:
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            index = order[i * batch : (i + 1) * batch]
            model, state, loss = step(model, state, x_train[index], y_train[index])
            losses.append(loss)
        progress.set_postfix(loss=f"{float(jnp.mean(jnp.stack(losses))):.4f}")

    result = float(accuracy(model, jnp.asarray(x_test), jnp.asarray(y_test)))
    print(f"test accuracy: {result:.3f} on {len(x_test)} held-out digits")
    return result


if __name__ == "__main__":
    test_accuracy = main()
    assert test_accuracy >= 0.95, f"test accuracy {test_accuracy:.3f} < 0.95"
