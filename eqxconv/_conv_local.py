"""`ConvLocal` (locally connected, "unshared" convolution) and its fixed-dimension
classes."""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from ._args import (
    check_input_dilation,
    check_positive_int,
    check_spatial_shape,
    check_window_fits,
    PaddingLike,
)
from ._geometry import dilated_shape, output_shape
from ._init import Initializer
from ._layer import layer_arguments, WeightedLayer
from ._ops import run_conv_local


class ConvLocal(WeightedLayer):
    """Locally connected ("unshared") N-dimensional convolution: a separate kernel at
    every output position, as [`eqxconv.conv_local`][] computes it.

    `weight` has shape `(out_channels, (in_channels // groups) * prod(kernel_size),
    *out_spatial)` (the `rhs` of `jax.lax.conv_general_dilated_local` with dimension
    numbers `("NCHW", "OIHW", "NCHW")` when `groups == 1`), and `bias` has shape
    `(out_channels, *out_spatial)`: one bias per output position, as in Flax's
    `ConvLocal`. The input's spatial shape is fixed at construction.
    """

    in_spatial_shape: tuple[int, ...] = eqx.field(static=True)
    input_dilation: tuple[int, ...] = eqx.field(static=True)
    chunk_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        input_dilation: int | Sequence[int] = 1,
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        chunk_size: int | None = None,
    ):
        """**Arguments:** those of [`eqxconv.Conv`][] (without `impl`), and:

        - `groups`: as for `Conv`; `lax.conv_general_dilated_local` and Flax refuse
            `groups > 1`, here output channel `o` sees the input channels of group
            `o // (out_channels // groups)`.
        - `use_bias`: whether to add a bias, one per output channel and position.
        - `in_spatial_shape`: the input's spatial shape `(dim_1, ..., dim_N)`
            (keyword only, required): it sizes the per-position kernels. A
            `ValueError` if the dilated kernel does not fit in it after padding.
        - `input_dilation`: the input dilation, an int or `N` ints (keyword only),
            as for [`eqxconv.conv_local`][] (Flax's `input_dilation`); the output,
            and so the weight, is sized on the dilated extent. Needs
            `padding_mode='ZEROS'`.
        - `kernel_init`, `bias_init`: as for `Conv`; the default's `fan_in =
            (in_channels // groups) * prod(kernel_size)` counts the inputs each
            output sees (unlike Flax's `ConvLocal`, not the output positions).
        - `precision`, `preferred_element_type`: passed to the contraction.
        - `chunk_size`: `None` (default), or a bound on how many output positions
            are computed at once, as for [`eqxconv.conv_local`][]: it bounds the
            patch tensor, which grows with the batch, at some cost in speed; the
            result is the same (see the benchmarks for when it lowers peak memory).
        """
        arguments = layer_arguments(locals())
        in_spatial_shape = arguments.pop("in_spatial_shape")
        input_dilation = arguments.pop("input_dilation")
        chunk_size = arguments.pop("chunk_size")
        self.chunk_size = (
            None if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
        )
        initialisation = self._configure(**arguments)
        self.in_spatial_shape = check_spatial_shape(
            in_spatial_shape, self.num_spatial_dims, "in_spatial_shape"
        )
        self.input_dilation = check_input_dilation(
            input_dilation, self.num_spatial_dims, self.padding_mode
        )
        self._initialise(**initialisation)

    def _parameter_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        out_spatial = check_window_fits(
            "in_spatial_shape",
            dilated_shape(self.in_spatial_shape, self.input_dilation),
            self.padding,
            self.kernel_size,
            self.stride,
            self.dilation,
        )
        per_position = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        return (
            (self.out_channels, per_position, *out_spatial),
            (self.out_channels, *out_spatial),
            per_position,
        )

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape this layer returns for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if the kernel does not fit).
        Calls accept only `in_spatial_shape == self.in_spatial_shape`."""
        in_spatial_shape = check_spatial_shape(
            in_spatial_shape, self.num_spatial_dims, "in_spatial_shape"
        )
        return output_shape(
            dilated_shape(in_spatial_shape, self.input_dilation),
            self.padding,
            self.kernel_size,
            self.stride,
            self.dilation,
        )

    def _apply(self, where: str, x: Array, weight: Array) -> Array:
        return run_conv_local(
            where,
            x,
            weight,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            input_dilation=self.input_dilation,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            chunk_size=self.chunk_size,
        )


class ConvLocal1d(ConvLocal):
    """A 1-dimensional `eqxconv.ConvLocal`: the same arguments without
    `num_spatial_dims`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        input_dilation: int | Sequence[int] = 1,
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        chunk_size: int | None = None,
    ):
        super().__init__(num_spatial_dims=1, **layer_arguments(locals()))


class ConvLocal2d(ConvLocal):
    """A 2-dimensional `eqxconv.ConvLocal`: the same arguments without
    `num_spatial_dims`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        input_dilation: int | Sequence[int] = 1,
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        chunk_size: int | None = None,
    ):
        super().__init__(num_spatial_dims=2, **layer_arguments(locals()))


class ConvLocal3d(ConvLocal):
    """A 3-dimensional `eqxconv.ConvLocal`: the same arguments without
    `num_spatial_dims`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        input_dilation: int | Sequence[int] = 1,
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        chunk_size: int | None = None,
    ):
        super().__init__(num_spatial_dims=3, **layer_arguments(locals()))
