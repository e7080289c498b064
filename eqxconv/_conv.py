"""`Conv` and its fixed-dimension aliases."""

import math
from collections.abc import Sequence
from typing import Any, TypedDict

import equinox as eqx
from jaxtyping import Array, Inexact, PRNGKeyArray
from typing_extensions import Unpack

from ._checks import checked_call
from ._init import (
    apply_mask,
    check_mask,
    init_parameters,
    Initializer,
    parameter_dtype,
)
from ._lowering_depthwise import check_impl
from ._ops import conv_normalised
from ._padding import (
    check_layer_args,
    normalise_padding,
    padded_output_shape,
    Padding,
    PaddingLike,
    PaddingMode,
    to_tuple,
)


class LayerExtras(TypedDict, total=False):
    """Keyword-only extras every layer with weights accepts."""

    kernel_init: Initializer | None
    bias_init: Initializer | None
    mask: Any
    precision: Any
    preferred_element_type: Any
    impl: str


class Conv(eqx.Module):
    """General N-dimensional convolution (cross-correlation), like
    `equinox.nn.Conv` with the same fields and weight layout, and PyTorch's
    default initialisation."""

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
    impl: str = eqx.field(static=True)

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
        - `stride`: the window stride, an int or `N` ints.
        - `padding`: an int, `N` ints, `N` `(low, high)` pairs, or one of `'VALID'`,
            `'SAME'` (output size `ceil(in / stride)`, odd extra pad at the end),
            `'SAME_LOWER'` (odd extra pad at the start), `'CAUSAL'` (pad
            `dilation * (kernel - 1)` before only) or `'CIRCULAR'` (`'SAME'` with
            `padding_mode='CIRCULAR'`); case-insensitive.
        - `dilation`: the kernel dilation, an int or `N` ints.
        - `groups`: the number of channel groups; must divide `in_channels` and
            `out_channels`.
        - `use_bias`: whether to add a bias.
        - `padding_mode`: `'ZEROS'` (default), `'REFLECT'` (`1234 -> 32123432`),
            `'REPLICATE'` (`1234 -> 11123444`) or `'CIRCULAR'` (`1234 -> 34123412`).
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
        - `precision`, `preferred_element_type`: passed to `lax.conv_general_dilated`.
        - `impl`: how the convolution is computed, as for [`eqxconv.conv`][]:
            `'auto'` (default; a shift-and-multiply-add lowering for depthwise and
            small-group convolutions on CPU, much faster than XLA's grouped
            convolution forward and backward, else `lax.conv_general_dilated`),
            `'xla'` or `'shift'`.
        """
        n, in_channels, out_channels, kernel_size, groups = check_layer_args(
            num_spatial_dims, in_channels, out_channels, kernel_size, groups, use_bias
        )
        dtype = parameter_dtype(dtype)

        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = to_tuple(stride, n, "stride")
        self.padding, self.padding_mode = normalise_padding(padding, padding_mode, n)
        self.dilation = to_tuple(dilation, n, "dilation")
        self.groups = groups
        self.use_bias = use_bias
        weight_shape = (out_channels, in_channels // groups, *kernel_size)
        self.weight, self.bias = init_parameters(
            key,
            weight_shape=weight_shape,
            bias_shape=(out_channels,) + (1,) * n if use_bias else None,
            fan_in=(in_channels // groups) * math.prod(kernel_size),
            dtype=dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
        )
        self.mask = check_mask(mask, weight_shape)
        self.precision = precision
        self.preferred_element_type = preferred_element_type
        self.impl = check_impl(impl)

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape this layer returns for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if the kernel does not fit)."""
        return padded_output_shape(
            self.padding, in_spatial_shape, self.kernel_size, self.stride, self.dilation
        )

    @checked_call
    def __call__(
        self,
        x: Inexact[Array, " {self.in_channels} *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " {self.out_channels} *out_spatial"]:
        """**Arguments:**

        - `x`: the input, shape `(in_channels, dim_1, ..., dim_N)`; batch with
            `jax.vmap`.
        - `key`: ignored; accepted for compatibility with the Equinox API.

        **Returns:**

        An array of shape `(out_channels, *out_spatial_shape((dim_1, ..., dim_N)))`.
        """
        out = conv_normalised(
            x,
            apply_mask(self.weight, self.mask),
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
        if self.bias is not None:
            out = out + self.bias.astype(out.dtype)
        return out


def _fixed_dims_doc(n: int) -> str:
    return f"As [`eqxconv.Conv`][] with `num_spatial_dims={n}`."


class Conv1d(Conv):
    __doc__ = _fixed_dims_doc(1)

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
        **extras: Unpack[LayerExtras],
    ):
        super().__init__(
            1, in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, use_bias, padding_mode, dtype, key=key, **extras,
        )  # fmt: skip


class Conv2d(Conv):
    __doc__ = _fixed_dims_doc(2)

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
        **extras: Unpack[LayerExtras],
    ):
        super().__init__(
            2, in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, use_bias, padding_mode, dtype, key=key, **extras,
        )  # fmt: skip


class Conv3d(Conv):
    __doc__ = _fixed_dims_doc(3)

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
        **extras: Unpack[LayerExtras],
    ):
        super().__init__(
            3, in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, use_bias, padding_mode, dtype, key=key, **extras,
        )  # fmt: skip
