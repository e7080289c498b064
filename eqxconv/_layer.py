"""What every layer with weights shares: its fields, its construction, and the
mask-and-bias step around its op."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact, PRNGKeyArray

from ._args import (
    check_layer_args,
    check_mask,
    check_precision,
    check_preferred_element_type,
    normalise_padding,
    PaddingLike,
    PaddingMode,
    parameter_dtype,
    to_tuple,
)
from ._checks import check_parameters, checked_call
from ._geometry import Padding
from ._init import init_parameters, Initializer


def layer_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's own arguments, from its `locals()` taken first thing, to pass
    on by keyword (the fixed-dimension classes forward everything they take)."""
    return {
        name: value
        for name, value in arguments.items()
        if name not in ("self", "__class__")
    }


def apply_mask(weight: Array, mask: Array | None) -> Array:
    """The weight with `mask` multiplied in; masked-out entries get zero gradient."""
    if mask is None:
        return weight
    mask = jax.lax.stop_gradient(mask)
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, weight, jnp.zeros((), weight.dtype))
    return weight * mask.astype(weight.dtype)


class WeightedLayer(eqx.Module):
    """The fields, construction and call shared by `Conv`, `ConvTranspose` and
    `ConvLocal`.

    A subclass's `__init__` validates its own extra arguments, then calls
    `_configure` (the configuration fields) and `_initialise` (weight, bias, mask and
    the `lax` options); `_parameter_shapes` says what its weight and bias look like,
    and `_apply` runs its op.
    """

    num_spatial_dims: int = eqx.field(static=True)
    weight: Array
    bias: Array | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    padding_mode: PaddingMode = eqx.field(static=True)
    mask: Array | None
    precision: Any = eqx.field(static=True)
    preferred_element_type: Any = eqx.field(static=True)

    def _configure(
        self,
        *,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: PaddingLike,
        dilation: int | Sequence[int],
        groups: int,
        use_bias: bool,
        padding_mode: str,
        **initialisation: Any,
    ) -> dict[str, Any]:
        """Validate and set the configuration fields; return the remaining
        arguments, those of `_initialise`."""
        n, in_channels, out_channels, kernel_size, groups = check_layer_args(
            num_spatial_dims, in_channels, out_channels, kernel_size, groups, use_bias
        )
        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = to_tuple(stride, n, "stride")
        self.padding, self.padding_mode = normalise_padding(padding, padding_mode, n)
        self.dilation = to_tuple(dilation, n, "dilation")
        self.groups = groups
        self.use_bias = use_bias
        return initialisation

    def _initialise(
        self,
        *,
        dtype: Any,
        key: PRNGKeyArray,
        kernel_init: Initializer | None,
        bias_init: Initializer | None,
        mask: Any,
        precision: Any,
        preferred_element_type: Any,
    ) -> None:
        """Initialise weight and bias, and set the mask and the `lax` options."""
        weight_shape, bias_shape, fan_in = self._parameter_shapes()
        self.weight, self.bias = init_parameters(
            key,
            weight_shape=weight_shape,
            bias_shape=bias_shape if self.use_bias else None,
            fan_in=fan_in,
            dtype=parameter_dtype(dtype),
            kernel_init=kernel_init,
            bias_init=bias_init,
        )
        self.mask = check_mask(mask, weight_shape)
        self.precision = check_precision(precision)
        self.preferred_element_type = check_preferred_element_type(
            preferred_element_type
        )

    def _parameter_shapes(
        self,
    ) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """`(weight_shape, bias_shape, fan_in)` for this configuration."""
        raise NotImplementedError

    def _apply(self, where: str, x: Array, weight: Array) -> Array:
        """The layer's op on a checked input, with the masked weight."""
        raise NotImplementedError

    @checked_call
    def __call__(
        self,
        x: Inexact[Array, " {self.in_channels} *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " {self.out_channels} *out_spatial"]:
        """**Arguments:**

        - `x`: the input, shape `(in_channels, dim_1, ..., dim_N)` (for `ConvLocal`,
            `(in_channels, *in_spatial_shape)`); batch with `jax.vmap`.
        - `key`: ignored; accepted for compatibility with the Equinox API.

        **Returns:**

        An array of shape `(out_channels, *out_spatial_shape((dim_1, ..., dim_N)))`.
        """
        where = type(self).__name__
        weight_shape, bias_shape, _ = self._parameter_shapes()
        check_parameters(
            where,
            {"weight": self.weight, "bias": self.bias, "mask": self.mask},
            {"weight": weight_shape, "bias": bias_shape},
        )
        out = self._apply(where, x, apply_mask(self.weight, self.mask))
        if self.bias is None:
            return out
        return out + self.bias.astype(out.dtype)
