"""`SpectralNorm`: a convolution divided by its operator norm on a fixed input shape."""

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Inexact, PRNGKeyArray

from ._args import (
    check_bool,
    check_positive_float,
    check_positive_int,
    check_spatial_shape,
    check_wrapped_layer,
)
from ._checks import check_input, check_parameters
from ._conv import Conv
from ._conv_local import ConvLocal
from ._conv_transpose import ConvTranspose
from ._layer import apply_mask, WeightedLayer


_Layer = TypeVar("_Layer", Conv, ConvTranspose, ConvLocal)

# As `equinox.nn.SpectralNorm`: the state starts near the top singular pair, so the
# first calls (and a model built and used at once in inference mode) are already
# close to normalised.
_WARMUP_ITERATIONS = 15


def _linear_map(layer: WeightedLayer, weight: Array) -> Callable[[Array], Array]:
    """The layer's map without its bias, `x -> A x`, for the weight `weight`: linear
    in `x`, and through the layer's own op, so every padding mode and `impl` is the
    one the layer computes."""
    where = type(layer).__name__
    masked = apply_mask(weight, layer.mask)
    return lambda x: layer._apply(where, x, masked)


def _normalise(x: Array, eps: float) -> Array:
    norm = jnp.linalg.norm(x.ravel())
    return x / jnp.maximum(norm, eps).astype(x.dtype)


def _power_iterations(
    linear: Callable[[Array], Array],
    u: Array,
    v: Array,
    num_iterations: int,
    eps: float,
) -> tuple[Array, Array]:
    """`num_iterations` steps `u = A v / |A v|`, `v = A* u / |A* u|`."""

    def step(_: Array, uv: tuple[Array, Array]) -> tuple[Array, Array]:
        _, v = uv
        out, pullback = jax.vjp(linear, v)
        u = _normalise(out, eps)
        # `jax.vjp` of a linear map is its transpose; conjugating around it gives
        # the adjoint, which is what the power iteration needs for complex weights.
        (back,) = pullback(jnp.conj(u))
        return u, _normalise(jnp.conj(back), eps)

    # One traced body whatever the count, so the compile time does not grow with it.
    return lax.fori_loop(0, num_iterations, step, (u, v))


class SpectralNorm(eqx.nn.StatefulLayer, Generic[_Layer]):
    """Spectral normalisation of a convolution by its **operator norm**: the wrapped
    layer's weight divided by the largest singular value σ of the whole linear map
    `x -> layer(x) - bias` on inputs of spatial shape `in_spatial_shape`, stride,
    padding, `padding_mode`, dilation, groups and mask included. So the normalised
    layer's Lipschitz constant (with respect to the 2-norm, on that input shape) is 1.

    `equinox.nn.SpectralNorm` (and PyTorch's `spectral_norm`) divide by the
    largest singular value of the kernel reshaped to an `(out_channels, -1)` matrix
    instead, which is not the convolution's norm: it is usually smaller when windows
    overlap (a stride smaller than the kernel), and padding changes the norm at the
    borders in either direction (see the API page for examples). Here σ is estimated
    by power iteration with the layer's own op and its exact adjoint (reverse-mode
    autodiff of that linear map).

    The conventions are `equinox.nn.SpectralNorm`'s: build it with
    `equinox.nn.make_with_state`; calling it returns `(output, state)`; the state
    holds the power-iteration pair, updated by `num_power_iterations` steps at every
    call in training mode and left as it is in inference mode (toggled by
    `equinox.nn.inference_mode`); no gradient flows through the pair, while σ,
    computed from it as `<u, A v>`, is differentiated with respect to the weight.
    The state does not depend on the input, so under `jax.vmap(model, in_axes=(0,
    None), out_axes=(0, None))` it stays unbatched.
    """

    layer: _Layer
    in_spatial_shape: tuple[int, ...] = eqx.field(static=True)
    uv_index: eqx.nn.StateIndex[tuple[Array, Array]]
    num_power_iterations: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        layer: _Layer,
        in_spatial_shape: Sequence[int],
        *,
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `layer`: the layer to normalise: an [`eqxconv.Conv`][],
            [`eqxconv.ConvTranspose`][] or [`eqxconv.ConvLocal`][] (or one of their
            fixed-dimension classes). Its `weight` is normalised; its bias is added
            after, unnormalised.
        - `in_spatial_shape`: the inputs' spatial shape `(dim_1, ..., dim_N)`. The
            operator norm depends on it (at the borders, and through the stride), so
            calls accept only inputs of this spatial shape. For a `ConvLocal` it must
            be the layer's own `in_spatial_shape`.
        - `num_power_iterations`: power-iteration steps per call in training mode
            (keyword only).
        - `eps`: the smallest norm a power-iteration vector is divided by, and the
            smallest σ the weight is divided by (keyword only).
        - `inference`: whether to leave the state as it is at every call; set by
            `equinox.nn.inference_mode` (keyword only).
        - `key`: a `jax.random` key for the power iteration's starting vector
            (keyword only). At construction it runs 15 steps, as Equinox does.

        The state's arrays are the power-iteration pair `(u, v)`: `u` of the output's
        shape `(out_channels, *layer.out_spatial_shape(in_spatial_shape))` and `v` of
        the input's shape `(in_channels, *in_spatial_shape)`, in the layer's dtypes.
        """
        where = type(self).__name__
        check_wrapped_layer(layer, (Conv, ConvTranspose, ConvLocal), where)
        in_spatial_shape = check_spatial_shape(
            in_spatial_shape, layer.num_spatial_dims, "in_spatial_shape"
        )
        try:
            layer.out_spatial_shape(in_spatial_shape)
        except ValueError as error:
            raise ValueError(
                f"`in_spatial_shape`={in_spatial_shape} does not fit the wrapped "
                f"{type(layer).__name__}: {error}"
            ) from None
        if isinstance(layer, ConvLocal) and in_spatial_shape != layer.in_spatial_shape:
            raise ValueError(
                f"`in_spatial_shape`={in_spatial_shape} must be the wrapped "
                f"ConvLocal's own `in_spatial_shape`={layer.in_spatial_shape}, the "
                "only input shape it takes."
            )
        self.layer = layer
        self.in_spatial_shape = in_spatial_shape
        self.num_power_iterations = check_positive_int(
            num_power_iterations, "num_power_iterations"
        )
        self.eps = check_positive_float(eps, "eps")
        self.inference = check_bool(inference, "inference")

        weight = lax.stop_gradient(layer.weight)
        linear = _linear_map(layer, weight)
        v = jr.normal(key, (layer.in_channels, *in_spatial_shape), weight.dtype)
        out = jax.eval_shape(linear, v)
        u = jnp.zeros(out.shape, out.dtype)
        u, v = _power_iterations(
            linear, u, _normalise(v, self.eps), _WARMUP_ITERATIONS, self.eps
        )
        self.uv_index = eqx.nn.StateIndex((u, v))

    def __call__(
        self,
        x: Inexact[Array, " in_channels *spatial"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Array, eqx.nn.State]:
        """**Arguments:**

        - `x`: the input, shape `(in_channels, *in_spatial_shape)`; batch with
            `jax.vmap(model, in_axes=(0, None), out_axes=(0, None))`.
        - `state`: the `equinox.nn.State` holding the power-iteration pair.
        - `key`: ignored; accepted for compatibility with the Equinox API.
        - `inference`: `True` or `False` overrides `self.inference` for this call;
            `None` (default) uses it.

        **Returns:**

        `(output, state)`: the wrapped layer's output with its weight divided by σ,
        and the state with the pair advanced by `num_power_iterations` steps (as it
        was, in inference mode).
        """
        del key
        where = type(self).__name__
        layer = self.layer
        with jax.named_scope(f"eqxconv.{where}"):
            check_input(
                where,
                x,
                num_spatial_dims=layer.num_spatial_dims,
                in_channels=layer.in_channels,
                in_spatial_shape=self.in_spatial_shape,
            )
            weight_shape, bias_shape, _ = layer._parameter_shapes()
            check_parameters(
                type(layer).__name__,
                {"weight": layer.weight, "bias": layer.bias, "mask": layer.mask},
                {"weight": weight_shape, "bias": bias_shape},
            )
            u, v = state.get(self.uv_index)
            if inference is None:
                inference = self.inference
            if not inference:
                u, v = _power_iterations(
                    _linear_map(layer, lax.stop_gradient(layer.weight)),
                    u,
                    v,
                    self.num_power_iterations,
                    self.eps,
                )
                state = state.set(self.uv_index, (u, v))
            u, v = lax.stop_gradient((u, v))
            sigma = jnp.real(jnp.vdot(u, _linear_map(layer, layer.weight)(v)))
            sigma = jnp.maximum(sigma, self.eps).astype(layer.weight.dtype)
            normalised = eqx.tree_at(lambda m: m.weight, layer, layer.weight / sigma)
            return normalised(x), state

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The wrapped layer's output spatial shape for `in_spatial_shape` (pure
        Python). Calls accept only `in_spatial_shape == self.in_spatial_shape`."""
        return self.layer.out_spatial_shape(in_spatial_shape)
