"""Depthwise (and small-group) convolutions: eqxconv's `impl` choices vs Equinox, lax
and PyTorch on CPU.

Columns: `auto` (eqxconv's default), `xla` (eqxconv forced onto
`lax.conv_general_dilated`), `lax` (raw batched `lax.conv_general_dilated`, NCHW),
`equinox` (`equinox.nn.Conv`), `torch` (`torch.nn.functional.convNd`, 2 threads).
eqxconv and Equinox are called as users call them: `jax.vmap` over an unbatched layer
or op. Forward, forward+backward (gradient of `sum(y * r)` for a fixed random `r`,
with respect to input and weight) and cold compile time of the jitted forward+backward.

Run: `python -m benchmarks.depthwise [--repeats N] [--cases main,c64,...] [--shift]`
(`--shift` adds a column forcing `impl="shift"`, to see where the heuristic switches).
"""

import argparse
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import torch
import torch.nn.functional as F

import eqxconv
from benchmarks._timing import compile_seconds, markdown, median_time, Table


# name: (batch, channels, groups, out_channels, spatial, kernel, stride, padding,
#        dilation)
CASES: dict[str, tuple[int, int, int, int, tuple[int, ...], int, int, int, int]] = {
    "main 2d C=256 64x64 k3": (4, 256, 256, 256, (64, 64), 3, 1, 1, 1),
    "2d C=64 64x64 k3": (4, 64, 64, 64, (64, 64), 3, 1, 1, 1),
    "2d C=512 64x64 k3": (4, 512, 512, 512, (64, 64), 3, 1, 1, 1),
    "2d C=256 64x64 k7 (ConvNeXt)": (4, 256, 256, 256, (64, 64), 7, 1, 3, 1),
    "2d C=256 64x64 k3 stride2": (4, 256, 256, 256, (64, 64), 3, 2, 1, 1),
    "2d C=256 64x64 k3 dilation2": (4, 256, 256, 256, (64, 64), 3, 1, 2, 2),
    "2d C=128->256 (multiplier 2)": (4, 128, 128, 256, (64, 64), 3, 1, 1, 1),
    "1d C=256 L=4096 k7": (4, 256, 256, 256, (4096,), 7, 1, 3, 1),
    "3d C=64 16x32x32 k3": (4, 64, 64, 64, (16, 32, 32), 3, 1, 1, 1),
    "2d C=256 groups=128 (2 in/group)": (4, 256, 128, 256, (64, 64), 3, 1, 1, 1),
    "2d C=256 groups=64 (4 in/group)": (4, 256, 64, 256, (64, 64), 3, 1, 1, 1),
}
ALIASES = {
    "main": "main 2d C=256 64x64 k3",
    "c64": "2d C=64 64x64 k3",
    "c512": "2d C=512 64x64 k3",
    "k7": "2d C=256 64x64 k7 (ConvNeXt)",
    "stride2": "2d C=256 64x64 k3 stride2",
    "dil2": "2d C=256 64x64 k3 dilation2",
    "mult2": "2d C=128->256 (multiplier 2)",
    "1d": "1d C=256 L=4096 k7",
    "3d": "3d C=64 16x32x32 k3",
    "g2": "2d C=256 groups=128 (2 in/group)",
    "g4": "2d C=256 groups=64 (4 in/group)",
}
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _jax_fns(apply: Callable[[Any, Any], Any]) -> tuple[Callable, Callable, Callable]:
    """Jitted forward, jitted forward+backward and the unjitted forward+backward of a
    batched `apply(x, w)`."""

    def loss(x, w, r):
        return jnp.sum(apply(x, w) * r)

    grad = jax.grad(loss, argnums=(0, 1))
    return jax.jit(apply), jax.jit(grad), grad


def run_case(name: str, repeats: int, with_shift: bool) -> dict[str, dict[str, float]]:
    batch, c_in, groups, c_out, spatial, k, stride, padding, dilation = CASES[name]
    n = len(spatial)
    key_x, key_w, key_r = jr.split(jr.key(0), 3)
    x = jr.normal(key_x, (batch, c_in, *spatial), jnp.float32)
    w = jr.normal(key_w, (c_out, c_in // groups, *(k,) * n), jnp.float32) * 0.1
    out_spatial = eqxconv.conv_output_shape(
        spatial, k, stride=stride, padding=padding, dilation=dilation
    )
    r = jr.normal(key_r, (batch, c_out, *out_spatial), jnp.float32)

    def eqxconv_apply(impl: str):
        def op(x, w):
            return eqxconv.conv(
                x,
                w,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                impl=impl,
            )

        return jax.vmap(op, in_axes=(0, None))

    layer = eqx.nn.Conv(
        n,
        c_in,
        c_out,
        k,
        stride,
        padding,
        dilation,
        groups,
        use_bias=False,
        key=jr.key(1),
    )

    def equinox_apply(x, w):
        model = eqx.tree_at(lambda m: m.weight, layer, w)
        return jax.vmap(model)(x)

    def lax_apply(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            (stride,) * n,
            ((padding, padding),) * n,
            rhs_dilation=(dilation,) * n,
            feature_group_count=groups,
        )

    impls: dict[str, Callable] = {"auto": eqxconv_apply("auto")}
    if with_shift:
        impls["shift"] = eqxconv_apply("shift")
    impls.update(xla=eqxconv_apply("xla"), lax=lax_apply, equinox=equinox_apply)

    fwd, fwdbwd, compile_ = {}, {}, {}
    for label, apply in impls.items():
        f, g, grad = _jax_fns(apply)
        fwd[label] = median_time(f, x, w, repeats=repeats, warmup=1)
        fwdbwd[label] = median_time(g, x, w, r, repeats=repeats, warmup=1)
        if label in ("auto", "shift", "xla"):
            compile_[label] = compile_seconds(grad, x, w, r)

    xt = torch.from_numpy(np.array(x)).requires_grad_(True)
    wt = torch.from_numpy(np.array(w)).requires_grad_(True)
    rt = torch.from_numpy(np.array(r))
    conv = TORCH_CONV[n]

    def torch_apply():
        return conv(
            xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups
        )

    def torch_fwd():
        with torch.no_grad():
            return torch_apply()

    def torch_fwdbwd():
        xt.grad = wt.grad = None
        (torch_apply() * rt).sum().backward()
        return wt.grad

    def sync(out):
        return out

    fwd["torch"] = median_time(torch_fwd, repeats=repeats, warmup=1, sync=sync)
    fwdbwd["torch"] = median_time(torch_fwdbwd, repeats=repeats, warmup=1, sync=sync)
    return {"fwd": fwd, "fwdbwd": fwdbwd, "compile": compile_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(ALIASES))
    parser.add_argument("--shift", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"jax {jax.__version__}, {jax.default_backend()}; torch {torch.__version__}")
    tables = {
        "fwd": Table("forward", "torch"),
        "fwdbwd": Table("forward + backward", "torch"),
        "compile": Table("cold compile of the jitted forward + backward", "xla"),
    }
    for table in tables.values():
        table.header()
    for alias in str(args.cases).split(","):
        name = ALIASES[alias] if alias in ALIASES else alias
        result = run_case(name, args.repeats, args.shift)
        for kind, table in tables.items():
            table.add(name, result[kind])
    print(markdown(list(tables.values())))


if __name__ == "__main__":
    main()
