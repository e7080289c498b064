"""Tree surgery on eqxconv layers: replace a layer, freeze a layer, mask a kernel.

eqxconv layers are plain immutable `equinox.Module`s (arrays as leaves, configuration
static), so the usual Equinox tools work on them unchanged:

1. `eqx.tree_at` swaps a whole layer, or just its weight.
2. `eqx.partition` with a filter tree freezes a layer: the optimiser never sees it.
3. `mask=` makes a PixelCNN-style causal 2D kernel: a pixel never sees pixels after it
   in raster order, and the masked weights get exactly zero gradient. A boolean mask
   is not an inexact array, so it is never trained.

Run: `python examples/tree_surgery.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm import tqdm

import eqxconv


def raster_mask(kernel: int, include_centre: bool) -> np.ndarray:
    """True where a kernel tap lies strictly before the centre in raster order."""
    mask = np.zeros((kernel, kernel), bool)
    centre = kernel // 2
    mask[:centre, :] = True
    mask[centre, : centre + include_centre] = True
    return mask


class Model(eqx.Module):
    stem: eqxconv.Conv2d
    body: eqxconv.Conv2d
    head: eqxconv.Conv2d

    def __init__(self, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        # PixelCNN's "type A" mask on the first layer, "type B" afterwards.
        self.stem = eqxconv.Conv2d(
            1, 8, 5, padding="SAME", mask=raster_mask(5, False), key=k1
        )
        self.body = eqxconv.Conv2d(
            8, 8, 3, padding="SAME", mask=raster_mask(3, True), key=k2
        )
        self.head = eqxconv.Conv2d(8, 1, 1, key=k3)

    def __call__(self, x: Float[Array, "1 h w"]) -> Float[Array, "1 h w"]:
        return self.head(jax.nn.relu(self.body(jax.nn.relu(self.stem(x)))))


def main(seed: int = 0) -> None:
    # Building the model and each part below compile anew, which takes seconds.
    parts = tqdm(total=3, desc="tree surgery", unit="part")
    model_key, data_key, swap_key = jr.split(jr.key(seed), 3)
    model = Model(model_key)
    images = jr.uniform(data_key, (16, 1, 12, 12))

    # 3. Causality of the masked stack: output (i, j) sees only earlier pixels.
    i, j = 6, 5
    grad = eqx.filter_jit(jax.grad(lambda x: model(x)[0, i, j]))(images[0])[0]
    order = np.arange(12 * 12).reshape(12, 12)
    later = order >= order[i, j]
    assert np.all(np.asarray(grad)[later] == 0), "a pixel saw itself or the future"
    parts.update()
    tqdm.write("masked stack is causal in raster order")

    # 2. Freeze the stem: train only body and head.
    trainable = jtu.tree_map(lambda _: False, model)
    trainable = eqx.tree_at(
        lambda m: (m.body.weight, m.body.bias, m.head.weight, m.head.bias),
        trainable,
        (True, True, True, True),
    )
    params, frozen = eqx.partition(model, trainable)
    optimiser = optax.adam(1e-2)
    state = optimiser.init(params)

    @eqx.filter_jit
    def step(params, state):
        def loss_fn(params):
            model = eqx.combine(params, frozen)
            return jnp.mean((jax.vmap(model)(images) - images) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(params, updates), state, loss, grads

    params, state, loss, grads = step(params, state)
    # Masked taps get exactly zero gradient.
    body_mask = raster_mask(3, True)
    assert np.all(np.asarray(grads.body.weight)[:, :, ~body_mask] == 0)
    for _ in range(50):
        params, state, loss, _ = step(params, state)
    trained = eqx.combine(params, frozen)
    assert np.array_equal(trained.stem.weight, model.stem.weight), "stem moved"
    assert not np.array_equal(trained.body.weight, model.body.weight)
    parts.update()
    tqdm.write(f"stem frozen, body and head trained (loss {float(loss):.4f})")

    # The boolean masks are not inexact arrays: the usual filter leaves them out.
    inexact, _ = eqx.partition(trained, eqx.is_inexact_array)
    assert inexact.stem.mask is None and inexact.body.mask is None

    # 1. Swap the head for a 3x3 conv with reflect padding, keeping everything else.
    new_head = eqxconv.Conv2d(
        8, 1, 3, padding="SAME", padding_mode="REFLECT", key=swap_key
    )
    swapped = eqx.tree_at(lambda m: m.head, trained, new_head)
    assert swapped(images[0]).shape == (1, 12, 12)
    # Or replace just a weight: zero the head and the output is the bias everywhere.
    zeroed = eqx.tree_at(lambda m: m.head.weight, trained, jnp.zeros((1, 8, 1, 1)))
    assert zeroed.head.bias is not None
    np.testing.assert_allclose(
        zeroed(images[0]), jnp.broadcast_to(zeroed.head.bias, (1, 12, 12))
    )
    parts.update()
    parts.close()
    print("replaced the head and a weight with eqx.tree_at")


if __name__ == "__main__":
    main()
