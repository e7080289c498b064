"""`ConvTranspose` and its fixed-dimension classes."""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from ._args import (
    check_choice,
    check_output_padding,
    check_spatial_shape,
    PaddingLike,
    TRANSPOSE_IMPLS,
    TransposeImpl,
)
from ._geometry import transposed_geometry
from ._init import Initializer
from ._layer import layer_arguments, WeightedLayer
from ._ops import run_conv_transpose


class ConvTranspose(WeightedLayer):
    """General N-dimensional transposed convolution, like
    `equinox.nn.ConvTranspose` with the same fields, weight layout and outputs,
    PyTorch's default initialisation, and every padding mode.

    It is the exact linear adjoint of the forward [`eqxconv.Conv`][] with the same
    `kernel_size`, `stride`, `padding`, `dilation`, `groups` and `padding_mode` (and
    `in_channels`/`out_channels` swapped), whose weight is this layer's with the
    spatial axes flipped and the two channel axes swapped within each group, as
    [`eqxconv.conv_transpose`][] computes it. So it goes back the way that `Conv`
    came, in shape and connectivity; `output_padding` picks which of the input sizes
    that `Conv` maps onto the same output size to return. With
    `padding_mode='REFLECT'`, `'REPLICATE'` or `'CIRCULAR'` the padded border is
    folded back onto the interior, the transpose of that padding (neither PyTorch nor
    Equinox offers these).
    """

    output_padding: tuple[int, ...] = eqx.field(static=True)
    impl: TransposeImpl = eqx.field(static=True)

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
        """**Arguments:** those of [`eqxconv.Conv`][], for the equivalent forward
        convolution, and:

        - `output_padding`: an int or `N` ints, `0 <= output_padding < max(stride,
            dilation)` (PyTorch's rule; `< stride` with `'SAME'`, `'SAME_LOWER'` or
            `'CIRCULAR'`), choosing among the output sizes that the forward `Conv` maps
            onto the input's size, as for [`eqxconv.conv_transpose`][].
        - `kernel_init`, `bias_init`: as for `Conv`, with PyTorch's transposed fan-in
            `fan_in = (out_channels // groups) * prod(kernel_size)` for the default.
        - `impl`: how the transposed convolution is computed, as for
            [`eqxconv.conv_transpose`][]: `'auto'` (default), `'phase'`,
            `'interior'` or `'lhs_dilation'`; all give the same values.
        """
        arguments = layer_arguments(locals())
        output_padding = arguments.pop("output_padding")
        self.impl = check_choice(arguments.pop("impl"), "impl", TRANSPOSE_IMPLS)
        initialisation = self._configure(**arguments)
        self.output_padding = check_output_padding(
            output_padding,
            self.num_spatial_dims,
            self.stride,
            self.dilation,
            self.padding,
        )
        self._initialise(**initialisation)

    def _parameter_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        return (
            (self.out_channels, self.in_channels // self.groups, *self.kernel_size),
            (self.out_channels,) + (1,) * self.num_spatial_dims,
            (self.out_channels // self.groups) * math.prod(self.kernel_size),
        )

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape this layer returns for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if it would be empty)."""
        in_spatial_shape = check_spatial_shape(
            in_spatial_shape, self.num_spatial_dims, "in_spatial_shape"
        )
        out, _, _ = transposed_geometry(
            tuple(in_spatial_shape),
            self.padding,
            self.kernel_size,
            self.stride,
            self.dilation,
            self.output_padding,
        )
        return out

    def _apply(self, where: str, x: Array, weight: Array) -> Array:
        return run_conv_transpose(
            where,
            x,
            weight,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            impl=self.impl,
        )


class ConvTranspose1d(ConvTranspose):
    """A 1-dimensional `eqxconv.ConvTranspose`: the same arguments without
    `num_spatial_dims`."""

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
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        super().__init__(num_spatial_dims=1, **layer_arguments(locals()))


class ConvTranspose2d(ConvTranspose):
    """A 2-dimensional `eqxconv.ConvTranspose`: the same arguments without
    `num_spatial_dims`."""

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
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        super().__init__(num_spatial_dims=2, **layer_arguments(locals()))


class ConvTranspose3d(ConvTranspose):
    """A 3-dimensional `eqxconv.ConvTranspose`: the same arguments without
    `num_spatial_dims`."""

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
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        impl: str = "auto",
    ):
        super().__init__(num_spatial_dims=3, **layer_arguments(locals()))
