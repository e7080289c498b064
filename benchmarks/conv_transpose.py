"""Benchmark: eqxconv.ConvTranspose against Equinox, `lax.conv_transpose` and PyTorch.

Forward, forward+backward (gradients of a scalar loss with respect to the parameters
and the input) and cold compile time, on the cases of issue 4, with every lowering of
eqxconv's transposed convolution side by side. Run:

    .venv/bin/python -m benchmarks.conv_transpose [--cases 1d,2d,3d] [--repeats 15]

Numbers on a shared CPU are noisy: repeat, compare ratios measured in one process.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqxconv
from benchmarks._timing import compile_seconds, markdown, median_time, Table
from eqxconv._args import TransposeImpl


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    output_padding: int
    size: int
    batch: int


CASES = {
    "1d": Case("1D 64->64 k16 s8 p4 L512 b8", 1, 64, 64, 16, 8, 4, 0, 512, 8),
    "2d": Case("2D 64->32 k4 s2 p1 32x32 b8", 2, 64, 32, 4, 2, 1, 0, 32, 8),
    "3d": Case("3D 32->32 k3 s2 p1 op1 16^3 b2", 3, 32, 32, 3, 2, 1, 1, 16, 2),
    # Not in the issue: how `'auto'` lowers an unstrided transposed convolution.
    "2d_s1": Case("2D 64->64 k3 s1 p1 32x32 b8", 2, 64, 64, 3, 1, 1, 0, 32, 8),
    "2d_k7_s1": Case("2D 32->32 k7 s1 p3 32x32 b8", 2, 32, 32, 7, 1, 3, 0, 32, 8),
}

LOWERINGS: tuple[TransposeImpl, ...] = ("phase", "interior", "lhs_dilation")


def _loss(out: Any) -> Any:
    return jnp.mean(out * out)


def jax_fns(case: Case, key: Any) -> dict[str, tuple[Callable, Callable, tuple]]:
    """name -> (forward, forward+backward, args) for every JAX implementation."""
    c = case
    xkey, ekey = jr.split(key)
    x = jr.normal(xkey, (c.batch, c.in_channels) + (c.size,) * c.n, jnp.float32)
    arguments = (c.n, c.in_channels, c.out_channels, c.kernel, c.stride, c.padding)
    eqx_layer = eqx.nn.ConvTranspose(*arguments, c.output_padding, key=ekey)
    weight, bias = eqx_layer.weight, eqx_layer.bias
    assert bias is not None
    fns: dict[str, tuple[Callable, Callable, tuple]] = {}

    def add(name: str, apply: Callable[[Any, Any, Any], Any]) -> None:
        def fwd(w, b, x):
            return apply(w, b, x)

        def fwd_bwd(w, b, x):
            return jax.grad(lambda w, b, x: _loss(apply(w, b, x)), (0, 1, 2))(w, b, x)

        fns[name] = (jax.jit(fwd), jax.jit(fwd_bwd), (weight, bias, x))

    ours = eqxconv.ConvTranspose(*arguments, c.output_padding, key=ekey)

    def layer_apply(w, b, x):
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), ours, (w, b))
        return jax.vmap(layer)(x)

    add("eqxconv", layer_apply)
    for lowering in LOWERINGS:

        def op(w, b, x, lowering: TransposeImpl = lowering):
            f = lambda xi: eqxconv.conv_transpose(  # noqa: E731
                xi,
                w,
                stride=c.stride,
                padding=c.padding,
                output_padding=c.output_padding,
                impl=lowering,
            )
            return jax.vmap(f)(x) + b

        add(f"eqxconv[{lowering}]", op)

    def eqx_apply(w, b, x):
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), eqx_layer, (w, b))
        return jax.vmap(layer)(x)

    add("equinox", eqx_apply)
    extent = c.kernel
    pad = ((extent - 1 - c.padding, extent - 1 - c.padding + c.output_padding),) * c.n
    spatial = "DHW"[3 - c.n :]
    numbers = ("NC" + spatial, "OI" + spatial, "NC" + spatial)

    def lax_apply(w, b, x):
        out = lax.conv_transpose(
            x, w, (c.stride,) * c.n, pad, dimension_numbers=numbers
        )
        return out + b

    add("lax.conv_transpose", lax_apply)
    return fns


def torch_fns(case: Case, weight: Any, bias: Any, x: Any):
    import torch

    c = case
    module_type = {
        1: torch.nn.ConvTranspose1d,
        2: torch.nn.ConvTranspose2d,
        3: torch.nn.ConvTranspose3d,
    }[c.n]
    module = module_type(
        c.in_channels, c.out_channels, c.kernel, c.stride, c.padding, c.output_padding
    )
    with torch.no_grad():
        flipped = np.flip(np.asarray(weight), axis=tuple(range(2, c.n + 2)))
        module.weight.copy_(torch.from_numpy(flipped.swapaxes(0, 1).copy()))
        module.bias.copy_(torch.from_numpy(np.array(bias).reshape(-1)))
    xt = torch.from_numpy(np.array(x)).requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return module(xt)

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        out = module(xt)
        (out * out).mean().backward()
        return xt.grad

    return fwd, fwd_bwd


def main() -> None:
    parser = argparse.ArgumentParser(description="ConvTranspose benchmark")
    parser.add_argument("--cases", default="1d,2d,3d")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    tables = [
        Table("forward", "equinox"),
        Table("forward+backward", "equinox"),
        Table("cold compile, forward+backward", "equinox"),
    ]
    if not args.no_torch:
        import torch

        torch.set_num_threads(2)
    for name in args.cases.split(","):
        case = CASES[name]
        fns = jax_fns(case, jr.key(0))
        times: list[dict[str, float]] = [{}, {}, {}]
        for label, (fwd, fwd_bwd, fargs) in fns.items():
            times[0][label] = median_time(fwd, *fargs, repeats=args.repeats)
            times[1][label] = median_time(fwd_bwd, *fargs, repeats=args.repeats)
            if not args.no_compile:
                times[2][label] = compile_seconds(fwd_bwd, *fargs)
        if not args.no_torch:
            weight, bias, x = fns["equinox"][2]
            tf, tfb = torch_fns(case, weight, bias, x)
            nothing = lambda out: out  # noqa: E731
            times[0]["torch"] = median_time(tf, repeats=args.repeats, sync=nothing)
            times[1]["torch"] = median_time(tfb, repeats=args.repeats, sync=nothing)
        for table, timing in zip(tables, times, strict=True):
            if not timing:
                continue
            if table is tables[0]:
                print(f"\n## {case.name}")
            table.header()
            table.add(case.name, timing)
    print(markdown([t for t in tables if t.rows]))


if __name__ == "__main__":
    main()
