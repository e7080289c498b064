"""The decision grid of `impl='auto'`: for each configuration, auto against every
impl, forward+backward under two losses, and the cold compile.

The gradient is with respect to the input and the weight, of the linear
`sum(y * r)` (a fixed random `r`) and of `sum(y ** 2)`, whose backward pass needs
the forward. Each row prints every impl's time, auto's choice, and auto / fastest
for both losses (the goal: at most 1.15). Rows: RGB/mono stems, 1x1, dense,
strided, grouped (2-16 channels per group), depthwise with multipliers, dilation,
kernels 1-15, small and large sizes, 1D/2D/3D; and strided/unstrided transposed
convolutions. The shift lowering is timed only where its unrolled products per
output stay small (beyond them it is never chosen, and its compile grows with them),
the patches lowering only on ungrouped rows.

The impls of a row are timed in turns, one call each per round, so that a change in
the machine's load falls on all of them alike. Where auto's gradient traces to the
same program as the impl it picks (checked on the jaxprs), auto's times are that
impl's: two timings of one program differ only by the machine's noise.

Run: `python -m benchmarks.auto [--quick]` (`--quick`: every third row, 5 repeats).
"""

import argparse
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import eqxconv
from benchmarks._timing import (
    compile_seconds,
    interleaved_median_times,
    markdown,
    Table,
)
from eqxconv._args import CONV_IMPLS, normalise_padding, TRANSPOSE_IMPLS
from eqxconv._choose import choose_conv_impl, choose_transpose_impl
from eqxconv._geometry import output_shape, resolve_padding


@dataclass(frozen=True)
class Row:
    batch: int
    in_channels: int
    out_channels: int
    spatial: tuple[int, ...]
    kernel: int
    stride: int = 1
    padding: Any = "SAME"
    dilation: int = 1
    groups: int = 1
    transpose: bool = False

    @property
    def name(self) -> str:
        n = len(self.spatial)
        parts = [
            f"{'T' if self.transpose else ''}{n}D {self.in_channels}->"
            f"{self.out_channels}",
            f"k{self.kernel}",
            "x".join(map(str, self.spatial)),
            f"b{self.batch}",
        ]
        if self.stride > 1:
            parts.append(f"s{self.stride}")
        if self.dilation > 1:
            parts.append(f"d{self.dilation}")
        if self.groups > 1:
            parts.append(f"g{self.groups}")
        return " ".join(parts)


def _conv_rows() -> list[Row]:
    rows = [
        # RGB / mono stems
        Row(8, 3, 64, (48, 48), 3),
        Row(8, 3, 32, (64, 64), 3, stride=2),
        Row(8, 3, 96, (64, 64), 4, stride=4, padding="VALID"),
        Row(8, 3, 64, (64, 64), 7, stride=2),
        Row(8, 1, 32, (2048,), 7),
        Row(2, 1, 16, (32, 32, 32), 3),
        Row(2, 3, 16, (32, 32, 32), 4, stride=4, padding="VALID"),
        # 1x1
        Row(8, 64, 128, (32, 32), 1),
        Row(8, 384, 96, (16, 16), 1),
        Row(8, 96, 384, (16, 16), 1),
        Row(8, 32, 32, (2048,), 1),
        Row(2, 32, 64, (16, 16, 16), 1),
        # dense
        Row(8, 64, 64, (32, 32), 3),
        Row(8, 16, 16, (16, 16), 3),
        Row(8, 128, 128, (8, 8), 3),
        Row(8, 32, 32, (2048,), 3, dilation=4, padding="CAUSAL"),
        Row(8, 64, 64, (512,), 15),
        Row(2, 16, 32, (16, 16, 16), 3),
        Row(8, 32, 32, (16, 16), 5),
        # strided
        Row(8, 64, 128, (32, 32), 3, stride=2),
        Row(8, 32, 64, (1024,), 4, stride=2),
        Row(2, 16, 32, (32, 32, 32), 3, stride=2),
        Row(2, 2, 16, (32, 32, 32), 3, stride=2),
        Row(2, 64, 64, (16, 16, 16), 3, stride=2),
        # grouped, 2-16 channels per group
        Row(8, 64, 64, (32, 32), 3, groups=32),
        Row(8, 64, 64, (32, 32), 3, groups=16),
        Row(8, 64, 64, (32, 32), 3, groups=8),
        Row(8, 64, 64, (32, 32), 3, groups=4),
        Row(8, 64, 128, (16, 16), 3, stride=2, groups=16),
        Row(8, 32, 32, (1024,), 5, groups=8),
        Row(2, 32, 32, (16, 16, 16), 3, groups=8),
        # depthwise, with multipliers
        Row(8, 64, 64, (32, 32), 3, groups=64),
        Row(8, 96, 96, (16, 16), 7, groups=96),
        Row(8, 64, 64, (32, 32), 7, groups=64),
        Row(8, 32, 64, (32, 32), 3, groups=32),
        Row(8, 32, 128, (16, 16), 3, groups=32),
        Row(8, 64, 64, (32, 32), 3, stride=2, groups=64),
        Row(8, 64, 64, (32, 32), 3, dilation=2, groups=64),
        Row(8, 32, 32, (64, 64), 5, groups=32),
        Row(8, 64, 64, (2048,), 7, groups=64),
        Row(8, 64, 64, (4096,), 15, groups=64),
        Row(8, 64, 64, (2048,), 3, dilation=8, groups=64, padding="CAUSAL"),
        Row(2, 32, 32, (16, 16, 16), 3, groups=32),
        Row(2, 16, 16, (32, 32, 32), 3, stride=2, groups=16),
        # small and large sizes
        Row(32, 16, 16, (8, 8), 3, groups=16),
        Row(2, 16, 16, (128, 128), 3, groups=16),
        Row(2, 8, 8, (256, 256), 3),
        Row(8, 8, 8, (16, 16), 1, groups=8),
    ]
    return rows


def _transpose_rows() -> list[Row]:
    return [
        Row(8, 128, 64, (4, 4), 4, stride=2, padding=1, transpose=True),
        Row(8, 64, 32, (16, 16), 4, stride=2, padding=1, transpose=True),
        Row(8, 32, 16, (32, 32), 3, stride=2, padding=1, transpose=True),
        Row(8, 64, 32, (16, 16), 2, stride=2, padding=0, transpose=True),
        Row(2, 32, 16, (16, 16, 16), 2, stride=2, padding=0, transpose=True),
        Row(8, 32, 32, (512,), 4, stride=2, padding=1, transpose=True),
        Row(8, 32, 32, (32, 32), 3, stride=1, padding=1, transpose=True),
        Row(8, 64, 64, (16, 16), 3, stride=2, padding=1, groups=64, transpose=True),
        Row(8, 16, 16, (32, 32), 5, stride=3, padding=2, transpose=True),
        Row(8, 32, 16, (16, 16), 3, stride=2, dilation=2, padding=2, transpose=True),
        Row(8, 3, 16, (32, 32), 4, stride=4, padding=0, transpose=True),
    ]


def _layer(row: Row, impl: str) -> Any:
    n = len(row.spatial)
    cls = eqxconv.ConvTranspose if row.transpose else eqxconv.Conv
    return cls(
        n,
        row.in_channels,
        row.out_channels,
        row.kernel,
        stride=row.stride,
        padding=row.padding,
        dilation=row.dilation,
        groups=row.groups,
        impl=impl,
        key=jr.key(0),
    )


def _impls(row: Row) -> list[str]:
    if row.transpose:
        return [impl for impl in TRANSPOSE_IMPLS if impl != "auto"]
    patched = ("patches", "xla_patches")
    # `'xla_or_patches'` differentiates the input here, so it is the patches
    # lowering's program: not timed twice (where auto takes it, auto is timed).
    skipped = ("auto", "shift", "xla_or_patches", *patched)
    impls = [impl for impl in CONV_IMPLS if impl not in skipped]
    # Grouped, the patches lowering was 2-25x slower than the fastest on every row
    # of the 2026-12-04 grid, and its large buffers slowed the impl timed after it in
    # each round (up to 3x), so it is timed on ungrouped rows only, and so is
    # `'xla_patches'`, which takes its input gradient from it.
    if row.groups == 1:
        impls.extend(patched)
    products = (row.in_channels // row.groups) * row.kernel ** len(row.spatial)
    if products <= 49:
        impls.append("shift")
    return impls


def _choice(row: Row) -> str:
    n = len(row.spatial)
    kernel, stride, dilation = (row.kernel,) * n, (row.stride,) * n, (row.dilation,) * n
    if row.transpose:
        return choose_transpose_impl(kernel, stride, dilation)
    padding, _ = normalise_padding(row.padding, "ZEROS", n)
    pairs = resolve_padding(padding, row.spatial, kernel, stride, dilation)
    padded = tuple(
        size + low + high for size, (low, high) in zip(row.spatial, pairs, strict=True)
    )
    return choose_conv_impl(
        in_channels=row.in_channels,
        out_channels=row.out_channels,
        groups=row.groups,
        kernel_size=kernel,
        stride=stride,
        dilation=dilation,
        padded_shape=padded,
        out_shape=output_shape(row.spatial, padding, kernel, stride, dilation),
        input_dilation=(1,) * n,
        dtype=jnp.float32,
    )


def measure(row: Row, repeats: int, tables: dict[str, Table]) -> None:
    x = jr.normal(jr.key(1), (row.batch, row.in_channels, *row.spatial))
    reference = _layer(row, "auto")
    r = jr.normal(jr.key(2), jax.eval_shape(jax.vmap(reference), x).shape)

    def linear(args):
        layer, x = args
        return jnp.sum(jax.vmap(layer)(x) * r)

    def square(args):
        layer, x = args
        return jnp.sum(jax.vmap(layer)(x) ** 2)

    timings: dict[str, dict[str, float]] = {title: {} for title in tables}
    layers = {impl: _layer(row, impl) for impl in ["auto", *_impls(row)]}
    choice = _choice(row)
    # 'auto' resolves to one impl at trace time. Where its gradient traces to the
    # very program of that impl, timing both would only measure the machine's noise
    # between two runs of one program: auto's times are then its choice's.
    same_program = choice in layers and all(
        str(jax.make_jaxpr(eqx.filter_grad(loss))((layers["auto"], x)))
        == str(jax.make_jaxpr(eqx.filter_grad(loss))((layers[choice], x)))
        for loss in (linear, square)
    )
    timed = {k: v for k, v in layers.items() if not (same_program and k == "auto")}
    for title, loss in (("sum(y * r)", linear), ("sum(y ** 2)", square)):
        # The gradient with respect to the layer's arrays and the input; every impl
        # in turn, one call each per round, so that load shifts fall on all alike.
        grad = eqx.filter_jit(eqx.filter_grad(loss))
        timings[title] = interleaved_median_times(
            {impl: (grad, ((layer, x),)) for impl, layer in timed.items()},
            repeats=repeats,
        )
    for impl, layer in timed.items():
        params, static = eqx.partition(layer, eqx.is_array)

        def cold(params, x, static=static):
            return jax.grad(square)((eqx.combine(params, static), x))

        timings["compile"][impl] = compile_seconds(cold, params, x, repeats=1)
    if same_program:
        for title in timings:
            timings[title] = {"auto": timings[title][choice], **timings[title]}
    for title, table in tables.items():
        table.add(row.name, timings[title])
    verdict = []
    for title in ("sum(y * r)", "sum(y ** 2)"):
        others = {k: v for k, v in timings[title].items() if k != "auto"}
        fastest = min(others, key=others.__getitem__)
        ratio = timings[title]["auto"] / others[fastest]
        verdict.append(f"{title}: auto/fastest {ratio:.2f} (fastest {fastest})")
    same = " (the same program)" if same_program else ""
    print(f"  -> auto picks {choice}{same}; " + "; ".join(verdict), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("conv", "transpose"))
    parser.add_argument("--match", help="only the rows whose name contains this")
    args = parser.parse_args()
    repeats = 5 if args.quick else 11
    groups = {"conv": _conv_rows(), "transpose": _transpose_rows()}
    for family, rows in groups.items():
        if args.only and args.only != family:
            continue
        if args.quick:
            rows = rows[:: 3 if family == "conv" else 2]
        if args.match:
            rows = [row for row in rows if args.match in row.name]
        titles = ("sum(y * r)", "sum(y ** 2)", "compile")
        tables = {title: Table(f"{family} {title}", "auto") for title in titles}
        for row in rows:
            measure(row, repeats, tables)
        print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
        print(markdown(list(tables.values())))
        print(f"{len(rows)} {family} rows")


if __name__ == "__main__":
    main()
