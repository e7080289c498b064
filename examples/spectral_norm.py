"""Spectral normalisation by the convolution's operator norm, not the kernel's.

`equinox.nn.SpectralNorm` (like PyTorch's `spectral_norm`) divides a convolution's
kernel by the largest singular value of the kernel reshaped to an
`(out_channels, in_channels * prod(kernel_size))` matrix. That is the operator norm of
the convolution only when windows neither overlap nor leave the input (stride equal to
the kernel, no padding: then the matrix is block-diagonal in copies of the reshaped
kernel); with overlapping windows, or reflected borders, the normalised layer can still
stretch an input by more than 1. `eqxconv.SpectralNorm` divides by the norm of the
whole map on the input shape it is built for.

For a few configurations this script builds the explicit matrix of the convolution
(its Jacobian, at most 800 by 300), takes its largest singular value with numpy, and
prints it beside the reshaped kernel's norm, eqxconv's σ, and the Lipschitz constant
(largest singular value) of the layer after each normalisation. It asserts that
eqxconv's σ is the SVD's, and that each normalised layer's output is the matrix's
divided by its σ, so that its norm is the SVD's divided by σ.

The stride-2 layer's two largest singular values are close (0.966 and 0.947), so power
iteration needs a couple of hundred steps there: in training they accumulate over the
calls, one per call by default.

Run: `python examples/spectral_norm.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

import eqxconv


IN_CHANNELS, OUT_CHANNELS, SIZE = 3, 8, 10

CONFIGS = [
    ("3x3, stride 1, padding 1", dict(kernel_size=3, padding=1)),
    ("3x3, stride 2, padding 1", dict(kernel_size=3, stride=2, padding=1)),
    (
        "3x3, stride 1, SAME, REFLECT",
        dict(kernel_size=3, padding="SAME", padding_mode="REFLECT"),
    ),
]


def explicit_matrix(layer, in_shape) -> np.ndarray:
    """The matrix of the linear `layer` (no bias) on inputs of shape `in_shape`: its
    Jacobian, built from the plain layer, without any normalisation."""
    x = jnp.zeros(in_shape)
    return np.asarray(jax.jit(jax.jacfwd(layer))(x).reshape(-1, x.size), np.float64)


def main() -> None:
    key = jr.key(0)
    in_shape = (IN_CHANNELS, SIZE, SIZE)
    print(
        f"{IN_CHANNELS} -> {OUT_CHANNELS} channels on {SIZE}x{SIZE} inputs, PyTorch's "
        "default initialisation\n"
    )
    header = (
        f"{'configuration':30} {'reshaped kernel':>15} {'true (SVD)':>10} "
        f"{'eqxconv σ':>10} {'Lipschitz after eqx.nn':>22} {'after eqxconv':>13}"
    )
    print(header)
    print("-" * len(header))
    # leave=False: the bar goes once the table is complete.
    for name, config in tqdm(CONFIGS, desc="configurations", leave=False):
        key, layer_key, norm_key, eqx_key, x_key = jr.split(key, 5)
        layer = eqxconv.Conv2d(
            IN_CHANNELS, OUT_CHANNELS, use_bias=False, key=layer_key, **config
        )
        matrix = explicit_matrix(layer, in_shape)
        true_sigma = float(np.linalg.norm(matrix, 2))
        reshaped = float(
            np.linalg.norm(np.asarray(layer.weight).reshape(OUT_CHANNELS, -1), 2)
        )
        x = jr.normal(x_key, in_shape)
        mx = matrix @ np.asarray(x, np.float64).ravel()

        # eqxconv's SpectralNorm: σ from the power-iteration pair, and the layer's
        # output divided by it.
        model, state = eqx.nn.make_with_state(eqxconv.SpectralNorm)(
            layer, (SIZE, SIZE), num_power_iterations=200, key=norm_key
        )
        y, state = eqx.filter_jit(model)(x, state)
        u, v = state.get(model.uv_index)
        sigma = float(jnp.vdot(u, layer(v)))
        assert abs(sigma - true_sigma) < 1e-4 * true_sigma, (sigma, true_sigma)
        np.testing.assert_allclose(
            np.asarray(y).ravel(), mx / sigma, rtol=1e-4, atol=1e-5
        )

        # Equinox's, on an `equinox.nn.Conv2d` holding the same weight: it divides
        # by the reshaped kernel's norm.
        eqx_layer = eqx.nn.Conv2d(
            IN_CHANNELS, OUT_CHANNELS, use_bias=False, key=eqx_key, **config
        )
        eqx_layer = eqx.tree_at(lambda m: m.weight, eqx_layer, layer.weight)
        eqx_model, eqx_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
            eqx_layer, "weight", num_power_iterations=50, key=eqx_key
        )
        eqx_y, _ = eqx_model(x, eqx_state)
        np.testing.assert_allclose(
            np.asarray(eqx_y).ravel(), mx / reshaped, rtol=1e-4, atol=1e-5
        )

        # Each normalised layer is `matrix / σ`, so its Lipschitz constant (its
        # largest singular value) is `true_sigma / σ`.
        tqdm.write(
            f"{name:30} {reshaped:15.4f} {true_sigma:10.4f} {sigma:10.4f} "
            f"{true_sigma / reshaped:22.4f} {true_sigma / sigma:13.4f}"
        )
    print("\nAfter eqxconv.SpectralNorm every layer has norm 1.")


if __name__ == "__main__":
    main()
