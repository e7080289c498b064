"""`ConvTranspose` and its fixed-dimension aliases."""

import math
from collections.abc import Sequence
from typing import Any, cast, TypedDict

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
from ._lowering_transpose import Lowering, LOWERINGS
from ._ops import conv_transpose_normalised
from ._padding import (
    check_choice,
    check_layer_args,
    check_output_padding,
    conv_transpose_geometry,
    normalise_padding,
    Padding,
    PaddingLike,
    PaddingMode,
    to_tuple,
)


class TransposeExtras(TypedDict, total=False):
    """Keyword-only extras of the transposed convolution layers."""

    kernel_init: Initializer | None
    bias_init: Initializer | None
    mask: Any
    precision: Any
    preferred_element_type: Any
    impl: str


class ConvTranspose(eqx.Module):
    """General N-dimensional transposed convolution, like
    `equinox.nn.ConvTranspose` with the same fields, weight layout and outputs,
    PyTorch's default initialisation, and every padding mode.

    It is the exact linear adjoint of the forward [`eqxconv.Conv`][] with the same
    `kernel_size`, `stride`, `padding`, `dilation`, `groups` and `padding_mode` (and
    `in_channels`/`out_channels` swapped), whose weight is this layer's with the
    spatial axes flipped and the two channel axes swapped within each group. So it goes
    back the way that `Conv` came, in shape and connectivity; `output_padding` picks
    which of the `stride` input sizes that `Conv` maps onto the same output size.
    With `padding_mode='REFLECT'`, `'REPLICATE'` or `'CIRCULAR'` the padded border is
    folded back onto the interior, the transpose of that padding (neither PyTorch nor
    Equinox offers these).
    """

    num_spatial_dims: int = eqx.field(static=True)
    weight: Array
    bias: Array | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    output_padding: tuple[int, ...] = eqx.field(static=True)
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
        output_padding: int | Sequence[int] = 0,
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
        - `stride`: the stride of the equivalent forward `Conv`, an int or `N` ints.
        - `padding`: the padding of the equivalent forward `Conv`: an int, `N` ints,
            `N` `(low, high)` pairs, or one of `'VALID'`, `'SAME'`, `'SAME_LOWER'`,
            `'CAUSAL'` or `'CIRCULAR'` (`'SAME'` with `padding_mode='CIRCULAR'`);
            case-insensitive. With `'SAME'`/`'SAME_LOWER'` the output size is
            `in * stride - output_padding`; otherwise it is `(in - 1) * stride +
            dilation * (kernel - 1) + 1 - low - high + output_padding`.
        - `output_padding`: an int or `N` ints, `0 <= output_padding <
            max(stride, dilation)` (PyTorch's rule; `< stride` with `'SAME'` or
            `'SAME_LOWER'`), choosing among the output sizes that the forward `Conv`
            maps onto the input's size.
        - `dilation`: the kernel dilation, an int or `N` ints.
        - `groups`: the number of channel groups; must divide `in_channels` and
            `out_channels`.
        - `use_bias`: whether to add a bias.
        - `padding_mode`: the forward `Conv`'s padding mode, `'ZEROS'` (default),
            `'REFLECT'`, `'REPLICATE'` or `'CIRCULAR'`; this layer is its adjoint.
        - `dtype`: the parameter dtype, floating or complex; defaults to `float32`
            (`float64` with `jax_enable_x64`).
        - `key`: a `jax.random` key for the initialisation (keyword only).
        - `kernel_init`, `bias_init`: callables `(key, shape, dtype) -> array`
            replacing the default, PyTorch's uniform on `[-1/sqrt(fan_in),
            1/sqrt(fan_in)]` with PyTorch's transposed fan-in `fan_in =
            (out_channels // groups) * prod(kernel_size)`.
        - `mask`: an array broadcastable to `weight`, multiplied into the weight at
            every call: where it is zero the weight never influences the output and
            gets zero gradient. A boolean mask is not an inexact array, so
            `eqx.partition(model, eqx.is_inexact_array)` does not train it.
        - `precision`, `preferred_element_type`: passed to `lax`.
        - `impl`: how the transposed convolution is computed, as for
            [`eqxconv.conv_transpose`][]: `'auto'` (default), `'phase'`,
            `'interior'` or `'lhs_dilation'`; all give the same values.
        """
        n, in_channels, out_channels, kernel_size, groups = check_layer_args(
            num_spatial_dims, in_channels, out_channels, kernel_size, groups, use_bias
        )
        dtype = parameter_dtype(dtype)
        stride = to_tuple(stride, n, "stride")
        dilation = to_tuple(dilation, n, "dilation")
        norm_padding, norm_mode = normalise_padding(padding, padding_mode, n)

        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding, self.padding_mode = norm_padding, norm_mode
        self.output_padding = check_output_padding(
            output_padding, n, stride, dilation, norm_padding
        )
        self.dilation = dilation
        self.groups = groups
        self.use_bias = use_bias
        weight_shape = (out_channels, in_channels // groups, *kernel_size)
        self.weight, self.bias = init_parameters(
            key,
            weight_shape=weight_shape,
            bias_shape=(out_channels,) + (1,) * n if use_bias else None,
            fan_in=(out_channels // groups) * math.prod(kernel_size),
            dtype=dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
        )
        self.mask = check_mask(mask, weight_shape)
        self.precision = precision
        self.preferred_element_type = preferred_element_type
        self.impl = check_choice(impl, "impl", LOWERINGS)

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape this layer returns for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if it would be empty)."""
        out, _, _ = conv_transpose_geometry(
            tuple(in_spatial_shape),
            self.padding,
            self.kernel_size,
            self.stride,
            self.dilation,
            self.output_padding,
        )
        return out

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
        out = conv_transpose_normalised(
            x,
            apply_mask(self.weight, self.mask),
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            impl=cast(Lowering, self.impl),
        )
        if self.bias is not None:
            out = out + self.bias.astype(out.dtype)
        return out


def _fixed_dims_doc(n: int) -> str:
    return f"As [`eqxconv.ConvTranspose`][] with `num_spatial_dims={n}`."


class ConvTranspose1d(ConvTranspose):
    __doc__ = _fixed_dims_doc(1)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        key: PRNGKeyArray,
        **extras: Unpack[TransposeExtras],
    ):
        super().__init__(
            1, in_channels, out_channels, kernel_size, stride, padding,
            output_padding, dilation, groups, use_bias, padding_mode, dtype,
            key=key, **extras,
        )  # fmt: skip


class ConvTranspose2d(ConvTranspose):
    __doc__ = _fixed_dims_doc(2)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        key: PRNGKeyArray,
        **extras: Unpack[TransposeExtras],
    ):
        super().__init__(
            2, in_channels, out_channels, kernel_size, stride, padding,
            output_padding, dilation, groups, use_bias, padding_mode, dtype,
            key=key, **extras,
        )  # fmt: skip


class ConvTranspose3d(ConvTranspose):
    __doc__ = _fixed_dims_doc(3)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        key: PRNGKeyArray,
        **extras: Unpack[TransposeExtras],
    ):
        super().__init__(
            3, in_channels, out_channels, kernel_size, stride, padding,
            output_padding, dilation, groups, use_bias, padding_mode, dtype,
            key=key, **extras,
        )  # fmt: skip
