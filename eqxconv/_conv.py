"""`Conv` and its fixed-dimension classes."""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from ._args import check_choice, check_spatial_shape, CONV_IMPLS, ConvImpl, PaddingLike
from ._geometry import output_shape
from ._init import Initializer
from ._layer import layer_arguments, WeightedLayer
from ._ops import run_conv


class Conv(WeightedLayer):
    """General N-dimensional convolution (cross-correlation), like
    `equinox.nn.Conv` with the same fields and weight layout, and PyTorch's
    default initialisation."""

    impl: ConvImpl = eqx.field(static=True)

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
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dimensions `N` (2 for images).
        - `in_channels`: the number of input channels.
        - `out_channels`: the number of output channels.
        - `kernel_size`: the kernel's spatial size, an int or `N` ints.
        - `stride`, `padding`, `dilation`, `padding_mode`: as for
            [`eqxconv.conv`][]: the window stride; an int, `N` ints, `N` `(low, high)`
            pairs, or one of `'VALID'`, `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`,
            `'CIRCULAR'`; the kernel dilation; `'ZEROS'` (default), `'REFLECT'`,
            `'REPLICATE'` or `'CIRCULAR'`.
        - `groups`: the number of channel groups; must divide `in_channels` and
            `out_channels`.
        - `use_bias`: whether to add a bias.
        - `dtype`: the parameter dtype, floating or complex; defaults to `float32`
            (`float64` with `jax_enable_x64`).
        - `key`: a `jax.random` key for the initialisation (keyword only).
        - `kernel_init`, `bias_init`: callables `(key, shape, dtype) -> array`
            replacing the default, PyTorch's uniform on `[-1/sqrt(fan_in),
            1/sqrt(fan_in)]` with `fan_in = (in_channels // groups) *
            prod(kernel_size)`.
        - `mask`: an array broadcastable to `weight`, multiplied into the weight at
            every call: where it is zero the weight never influences the output and
            gets zero gradient. A boolean mask is not an inexact array, so
            `eqx.partition(model, eqx.is_inexact_array)` does not train it.
        - `precision`, `preferred_element_type`: passed to `lax`.
        - `impl`: how the convolution is computed, as for [`eqxconv.conv`][]: `'auto'`
            (default), `'xla'`, `'shift'`, `'patches'`, `'xla_patches'` (XLA's forward
            and weight gradient, the patches' input gradient), `'xla_or_patches'`
            (`'xla'` where the input is not differentiated, else `'patches'`) or
            `'fft'` (through FFTs, for large kernels: equal up to FFT rounding
            relative to the output's scale; `precision` has no effect there); all
            give the same values, except that through `'fft'` (which `'auto'` may
            take) a non-finite input makes every output of its channel group NaN.
        """
        arguments = layer_arguments(locals())
        self.impl = check_choice(arguments.pop("impl"), "impl", CONV_IMPLS)
        self._initialise(**self._configure(**arguments))

    def _parameter_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        per_group = self.in_channels // self.groups
        return (
            (self.out_channels, per_group, *self.kernel_size),
            (self.out_channels,) + (1,) * self.num_spatial_dims,
            per_group * math.prod(self.kernel_size),
        )

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape this layer returns for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if the kernel does not fit)."""
        in_spatial_shape = check_spatial_shape(
            in_spatial_shape, self.num_spatial_dims, "in_spatial_shape"
        )
        return output_shape(
            in_spatial_shape, self.padding, self.kernel_size, self.stride, self.dilation
        )

    def _apply(self, where: str, x: Array, weight: Array) -> Array:
        return run_conv(
            where,
            x,
            weight,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            input_dilation=(1,) * self.num_spatial_dims,
            groups=self.groups,
            padding_mode=self.padding_mode,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            impl=self.impl,
        )


class Conv1d(Conv):
    """A 1-dimensional `eqxconv.Conv`: the same arguments without
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
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        super().__init__(num_spatial_dims=1, **layer_arguments(locals()))


class Conv2d(Conv):
    """A 2-dimensional `eqxconv.Conv`: the same arguments without
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
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        super().__init__(num_spatial_dims=2, **layer_arguments(locals()))


class Conv3d(Conv):
    """A 3-dimensional `eqxconv.Conv`: the same arguments without
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
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        super().__init__(num_spatial_dims=3, **layer_arguments(locals()))
