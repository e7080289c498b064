"""A volume too big for one device, split along its depth over 8 devices.

A small 3D U-Net (a strided downsampling, a depthwise block, a transposed-convolution
upsampling, a skip connection, reflected and replicated padding) trains on volumes
whose depth axis is split over a one-axis mesh in explicit sharding mode
(`jax.sharding.AxisType.Explicit`): every eqxconv layer runs per shard, exchanging
only the halos its kernel needs with the neighbouring devices. The script checks that
the compiled training step gathers nothing (no `all-gather` in its HLO), that the
output keeps the depth split, that loss and updated parameters equal the
single-device step, and prints what each device holds (`memory_analysis`). On a
CPU-only machine it asks XLA for 8 host devices, so it runs anywhere.

Run: `python examples/spatial_parallel.py`
"""

import os


# Must be set before JAX starts; a no-op where real devices exist.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402
from jaxtyping import Array, Float, PRNGKeyArray  # noqa: E402

import eqxconv  # noqa: E402


class UNet(eqx.Module):
    stem: eqxconv.Conv3d
    down: eqxconv.Conv3d
    mix: eqxconv.Conv3d
    up: eqxconv.ConvTranspose3d
    head: eqxconv.Conv3d

    def __init__(self, key: PRNGKeyArray):
        keys = jr.split(key, 5)
        self.stem = eqxconv.Conv3d(
            1, 8, 3, padding="SAME", padding_mode="REFLECT", key=keys[0]
        )
        self.down = eqxconv.Conv3d(8, 16, 2, stride=2, key=keys[1])
        self.mix = eqxconv.Conv3d(16, 16, 3, padding="SAME", groups=16, key=keys[2])
        self.up = eqxconv.ConvTranspose3d(16, 8, 2, stride=2, key=keys[3])
        self.head = eqxconv.Conv3d(
            16, 1, 3, padding="SAME", padding_mode="REPLICATE", key=keys[4]
        )

    def __call__(self, x: Float[Array, "1 d h w"]) -> Float[Array, "1 d h w"]:
        skip = jax.nn.gelu(self.stem(x))
        low = jax.nn.gelu(self.down(skip))
        low = low + jax.nn.gelu(self.mix(low))
        up = jax.nn.gelu(self.up(low))
        return self.head(jnp.concatenate([up, skip]))


def main(seed: int = 0) -> None:
    devices = jax.devices()
    print(f"{len(devices)} devices: {[d.platform for d in devices]}")
    assert len(devices) >= 8, "needs 8 devices to split the depth over"
    model_key, data_key, target_key = jr.split(jr.key(seed), 3)
    model = UNet(model_key)
    # Depth 32 over 8 devices: 4 slices each, 2 after the downsampling, enough for
    # the 3x3x3 kernels' halos of one.
    shape = (2, 1, 32, 16, 16)
    x = jr.normal(data_key, shape)
    y = jr.normal(target_key, shape)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.adam(1e-3)
    state = optimiser.init(params)

    # `jax.jit` over the arrays alone, so that its `Compiled` can be inspected.
    @jax.jit
    def step(params, state, x, y):
        def loss_fn(params):
            model = eqx.combine(params, static)
            return jnp.mean((jax.vmap(model)(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(params, updates), state, loss

    def memory(*args) -> int:
        """Bytes of arguments and temporaries each device holds for one step."""
        stats = step.lower(*args).compile().memory_analysis()
        assert stats is not None
        return stats.argument_size_in_bytes + stats.temp_size_in_bytes

    single_params, _, single_loss = step(params, state, x, y)
    single_bytes = memory(params, state, x, y)

    # Sharded: depth split over the mesh, model and optimiser state replicated.
    mesh = jax.make_mesh((8,), ("depth",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        split = NamedSharding(mesh, P(None, None, "depth"))
        xs, ys = jax.device_put((x, y), split)
        out = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(model, xs)
        print(f"output type: {jax.typeof(out)}")
        assert jax.typeof(out).sharding.spec[2] == "depth"
        hlo = step.lower(params, state, xs, ys).compile().as_text() or ""
        assert "all-gather" not in hlo, "the sharded step gathers activations"
        permutes = hlo.count(" collective-permute(")
        permutes += hlo.count(" collective-permute-start(")
        print(f"sharded step: {permutes} halo exchanges (collective-permutes)")
        sharded_params, _, sharded_loss = step(params, state, xs, ys)
        sharded_bytes = memory(params, state, xs, ys)

    print(f"loss single {float(single_loss):.6f}  sharded {float(sharded_loss):.6f}")
    print(
        f"per device: {single_bytes / 2**20:.2f} MiB on one device, "
        f"{sharded_bytes / 2**20:.2f} MiB on each of 8"
    )
    assert sharded_bytes < single_bytes / 2
    np.testing.assert_allclose(sharded_loss, single_loss, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(sharded_params), jax.tree.leaves(single_params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("sharded step equals the single-device step")


if __name__ == "__main__":
    main()
