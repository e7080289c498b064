"""The same training step sharded over devices with `jax.sharding`.

The batch axis is split over a one-axis device mesh (`NamedSharding`) while the
eqxconv model is replicated; XLA inserts the gradient all-reduce. On a CPU-only
machine the script asks XLA for 4 host devices, so it runs anywhere. It checks that
the sharded loss and updated parameters equal the single-device ones.

Run: `python examples/data_parallel.py`
"""

import os


# Must be set before JAX starts; a no-op where real devices exist.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402
from jaxtyping import Array, Float, PRNGKeyArray  # noqa: E402
from tqdm import tqdm  # noqa: E402

import eqxconv  # noqa: E402


class Net(eqx.Module):
    convs: tuple[eqxconv.Conv2d, ...]

    def __init__(self, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        self.convs = (
            eqxconv.Conv2d(3, 16, 3, padding="SAME", padding_mode="REFLECT", key=k1),
            eqxconv.Conv2d(16, 16, 3, stride=2, padding="CIRCULAR", key=k2),
            eqxconv.Conv2d(16, 3, 3, padding=1, key=k3),
        )

    def __call__(self, x: Float[Array, "3 h w"]) -> Float[Array, "3 h2 w2"]:
        for conv in self.convs[:-1]:
            x = jax.nn.relu(conv(x))
        return self.convs[-1](x)


def main(seed: int = 0) -> None:
    devices = jax.devices()
    print(f"{len(devices)} devices: {[d.platform for d in devices]}")
    assert len(devices) >= 2, "needs at least two devices to shard over"
    model_key, data_key, target_key = jr.split(jr.key(seed), 3)
    model = Net(model_key)
    batch = 8 * len(devices)
    x = jr.normal(data_key, (batch, 3, 16, 16))
    y = jr.normal(target_key, (batch, 3, 8, 8))
    optimiser = optax.sgd(0.05)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, x, y):
        def loss_fn(model):
            return jnp.mean((jax.vmap(model)(x) - y) ** 2)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    # Each of the two calls below compiles the step anew, for its own shardings.
    progress = tqdm(total=2, desc="single-device, then sharded step", unit="step")
    # Single device.
    single_model, _, single_loss = step(model, state, x, y)
    progress.update()

    # Sharded: batch split over the mesh, model and optimiser state replicated.
    mesh = Mesh(np.array(devices), ("batch",))
    data = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    x_sharded, y_sharded = jax.device_put((x, y), data)
    model_r, state_r = eqx.filter_shard((model, state), replicated)
    sharded_model, _, sharded_loss = step(model_r, state_r, x_sharded, y_sharded)
    progress.update()
    progress.close()
    print(f"loss single {float(single_loss):.6f}  sharded {float(sharded_loss):.6f}")
    print(f"input sharding: {x_sharded.sharding}")

    np.testing.assert_allclose(sharded_loss, single_loss, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(sharded_model, eqx.is_inexact_array)),
        jax.tree.leaves(eqx.filter(single_model, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("sharded step equals the single-device step")


if __name__ == "__main__":
    main()
