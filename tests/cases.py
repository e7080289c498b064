"""The registry of layer cases that the property tests (`test_transforms.py`) sweep:
every layer family in 1D/2D/3D with a spread of stride, padding, dilation, groups,
padding modes and lowerings, all small.

A `LayerCase` is also the named configuration the value tests of each family use
for their own cases, in place of positional tuples."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import eqxconv

from .helpers import as_tuple


FAMILIES = ("conv", "conv_transpose", "conv_local", "extract_patches", "fold_patches")


@dataclass(frozen=True)
class LayerCase:
    """One layer configuration. `spatial` is the input's spatial shape, except for
    `fold_patches`, where it is the output's (`out_spatial_shape`)."""

    family: str
    spatial: tuple[int, ...]
    kernel_size: Any = 3
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    in_channels: int = 2
    out_channels: int = 2
    groups: int = 1
    use_bias: bool = True
    padding_mode: str = "ZEROS"
    output_padding: Any = 0
    input_dilation: Any = 1
    impl: str = "auto"
    chunk_size: int | None = None
    check_grads_order: int = 1
    """Up to which order `test_transforms` runs `check_grads`: second order on a
    few cases, as each costs several compilations."""

    def __post_init__(self):
        assert self.family in FAMILIES, self.family

    @property
    def n(self) -> int:
        return len(self.spatial)

    @property
    def id(self) -> str:
        """Family, dimensions, spatial shape and the fields that differ from the
        defaults, e.g. `conv-2d-(7, 6)-stride=2-padding=SAME`."""
        return "-".join([self.family, f"{self.n}d", str(self.spatial), self.fields_id])

    @property
    def fields_id(self) -> str:
        """The configuration fields that differ from the defaults."""
        return "-".join(
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name not in ("family", "spatial", "check_grads_order")
            and getattr(self, f.name) != f.default
        )

    def tuple_of(self, name: str) -> tuple[int, ...]:
        """`kernel_size`, `stride`, `dilation`, `output_padding` or `input_dilation`
        as `n` ints."""
        return as_tuple(getattr(self, name), self.n)

    def weighted_arguments(self) -> dict[str, Any]:
        """The constructor arguments that `Conv`, `ConvTranspose` and `ConvLocal`
        share."""
        return dict(
            num_spatial_dims=self.n,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            use_bias=self.use_bias,
            padding_mode=self.padding_mode,
        )

    def build(self, key, **extras) -> Any:
        """The module, with `extras` passed to its constructor."""
        window = dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        if self.family == "conv":
            return eqxconv.Conv(
                **self.weighted_arguments(), impl=self.impl, key=key, **extras
            )
        if self.family == "conv_transpose":
            return eqxconv.ConvTranspose(
                **self.weighted_arguments(),
                output_padding=self.output_padding,
                impl=self.impl,
                key=key,
                **extras,
            )
        if self.family == "conv_local":
            return eqxconv.ConvLocal(
                **self.weighted_arguments(),
                in_spatial_shape=self.spatial,
                chunk_size=self.chunk_size,
                key=key,
                **extras,
            )
        if self.family == "extract_patches":
            return eqxconv.ExtractPatches(
                self.n, **window, padding_mode=self.padding_mode, **extras
            )
        return eqxconv.FoldPatches(self.n, self.spatial, **window, **extras)

    def input_shape(self, layer: Any) -> tuple[int, ...]:
        """The shape of one unbatched input to `layer` (built from this case)."""
        if self.family == "fold_patches":
            patch_channels = self.in_channels * math.prod(self.tuple_of("kernel_size"))
            return (patch_channels, *layer.in_spatial_shape)
        return (self.in_channels, *self.spatial)


def conv(spatial, **fields) -> LayerCase:
    return LayerCase("conv", spatial, **fields)


def conv_transpose(spatial, **fields) -> LayerCase:
    return LayerCase("conv_transpose", spatial, **fields)


def conv_local(spatial, **fields) -> LayerCase:
    return LayerCase("conv_local", spatial, **fields)


def extract_patches(spatial, **fields) -> LayerCase:
    return LayerCase("extract_patches", spatial, **fields)


def fold_patches(spatial, **fields) -> LayerCase:
    return LayerCase("fold_patches", spatial, **fields)


REGISTRY = [
    # conv: XLA's convolution and the shift lowering, every padding form.
    conv(
        (6, 5),
        stride=2,
        padding="same",
        padding_mode="reflect",
        out_channels=3,
        check_grads_order=2,
    ),
    conv(
        (6, 5),
        kernel_size=(3, 2),
        padding=((0, 2), (1, 0)),
        dilation=(2, 1),
        groups=2,
        out_channels=4,
        padding_mode="REPLICATE",
        impl="shift",
    ),
    conv((4, 3, 4), kernel_size=2, padding=1, padding_mode="CIRCULAR"),
    conv((8,), padding="CAUSAL", dilation=2, groups=2, impl="shift"),
    conv((6, 7), stride=2, padding="CIRCULAR", impl="xla"),
    conv((9,), kernel_size=4, stride=2, padding="SAME", impl="fft"),
    conv((6, 5), padding=1, groups=2, padding_mode="REFLECT", impl="fft"),
    # The patches lowering: strided 3D (where 'auto' takes it), grouped, dilated and
    # strided in 2D.
    conv((5, 6, 5), stride=2, padding=1, out_channels=3, impl="patches"),
    conv(
        (7, 6),
        groups=2,
        stride=(2, 1),
        dilation=(1, 2),
        padding="SAME",
        padding_mode="REFLECT",
        impl="patches",
        check_grads_order=2,
    ),
    # XLA's forward and weight gradient with the patches' input gradient: a strided
    # RGB stem, a dilated 1D kernel with reflect padding's border reads, and a 3D
    # mono stem with input dilation.
    conv(
        (7, 6),
        in_channels=3,
        out_channels=4,
        stride=2,
        padding="SAME",
        impl="xla_patches",
        check_grads_order=2,
    ),
    conv((9,), dilation=2, padding=2, padding_mode="REFLECT", impl="xla_patches"),
    conv(
        (5, 4, 5),
        in_channels=1,
        padding=1,
        input_dilation=(1, 2, 1),
        impl="xla_patches",
    ),
    # XLA's program where the input is not differentiated, the patches lowering's
    # where it is: a 3D mono stem, and a strided 2D layer with reflect padding.
    conv((5, 6, 5), in_channels=1, padding=1, impl="xla_or_patches"),
    conv(
        (8, 7),
        in_channels=3,
        stride=2,
        padding=1,
        padding_mode="REFLECT",
        impl="xla_or_patches",
        check_grads_order=2,
    ),
    # The shift lowering's custom derivatives: a channel multiplier on an input long
    # enough for the blocked weight tangent, small groups, 3D depthwise.
    conv(
        (68,),
        groups=2,
        out_channels=4,
        dilation=2,
        padding="SAME",
        padding_mode="REFLECT",
        impl="shift",
        check_grads_order=2,
    ),
    conv(
        (5, 4),
        in_channels=4,
        groups=2,
        kernel_size=2,
        stride=(1, 2),
        dilation=(2, 1),
        padding=1,
        padding_mode="CIRCULAR",
        impl="shift",
        check_grads_order=2,
    ),
    conv(
        (3, 3, 4),
        groups=2,
        kernel_size=(2, 1, 2),
        stride=(1, 1, 2),
        padding=1,
        impl="shift",
        check_grads_order=2,
    ),
    # conv_transpose: every lowering, padding modes folded back.
    conv_transpose(
        (3,),
        in_channels=4,
        stride=2,
        padding="SAME",
        output_padding=1,
        groups=2,
        padding_mode="REFLECT",
        check_grads_order=2,
    ),
    conv_transpose(
        (3, 4), stride=(2, 1), padding=1, output_padding=(1, 0), impl="phase"
    ),
    conv_transpose(
        (3, 2, 3),
        stride=2,
        padding="SAME",
        output_padding=1,
        padding_mode="REPLICATE",
    ),
    conv_transpose((4, 3), stride=2, dilation=(1, 2), impl="interior"),
    conv_transpose((5,), dilation=2, padding="CAUSAL", impl="lhs_dilation"),
    # conv_local: chunked and not, groups.
    conv_local((9,), stride=2, padding=1, in_channels=4, groups=2, chunk_size=2),
    conv_local((5, 4), kernel_size=2, padding="SAME", padding_mode="REFLECT"),
    # Patches: reshape and slicing lowerings, padding modes on extraction.
    extract_patches((9, 8), stride=2, padding="SAME"),
    extract_patches((8,), kernel_size=4, stride=4),
    extract_patches(
        (4, 4, 3), kernel_size=2, padding=(1, 0, 1), padding_mode="CIRCULAR"
    ),
    fold_patches((7, 6), kernel_size=(2, 3), stride=(1, 2), padding="SAME_LOWER"),
    fold_patches((7,), kernel_size=2, stride=3, padding=1, dilation=2),
]
