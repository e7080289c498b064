"""FFT convolution: `impl='fft'` against `impl='xla'` and torch over kernel sizes, the
sweep behind the `'fft'` rule of `impl='auto'`.

Columns: `fft` and `xla` (eqxconv forced onto each lowering; `shift` too on the rows
where `impl='auto'` picks it), `torch`
(`torch.nn.functional.conv1d/conv2d`, CPU, as many threads as XLA uses cores).
eqxconv is called as users call it: `jax.vmap` over the unbatched op, `padding='SAME'`.
Forward+backward is the gradient, with respect to input and weight, of the nonlinear
loss `sum(y ** 2)`. Medians of `--repeats` calls after one warmup; a call that took
over a second is timed once. First call is the trace + compile (+ one run) of the jitted
forward+backward. Each row names what `impl='auto'` picks for it.

Run: `python -m benchmarks.fft [--quick | --large] [--repeats N]`: `--quick` takes
four rows, `--large` adds the two slowest (1D k=2048 at L=16384, 2D k=63 at 128^2).
The issue's ranges (1D L up to 65536, 2D up to 256^2) are trimmed to what runs in
minutes on two shared cores.
"""

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import torch
import torch.nn.functional as F

import eqxconv
from benchmarks._timing import markdown, median_time, Table
from eqxconv import _choose


# name: (batch, in_channels, out_channels, groups, spatial, kernel)
Case = tuple[int, int, int, int, tuple[int, ...], int]


def _cases(quick: bool, large: bool) -> dict[str, Case]:
    if quick:
        rows: list[Case] = [
            (4, 16, 16, 1, (4096,), 15),
            (4, 16, 16, 1, (4096,), 255),
            (4, 16, 16, 1, (16384,), 1024),
            (2, 8, 8, 1, (64, 64), 15),
        ]
    else:
        rows = [
            *((4, 16, 16, 1, (4096,), k) for k in (7, 15, 31, 63, 127, 255, 1024)),
            *((4, 16, 16, 1, (16384,), k) for k in (63, 255, 1024)),
            (1, 16, 16, 1, (4096,), 127),
            *((4, 64, 64, 64, (4096,), k) for k in (31, 63, 255)),
            *((2, 32, 32, 32, (64, 64), k) for k in (9, 15)),
            *((2, 8, 8, 1, (64, 64), k) for k in (7, 15, 31)),
            *((2, 8, 8, 1, (128, 128), k) for k in (15, 31)),
        ]
    if large:
        # Rows where a single torch or xla forward+backward takes seconds.
        rows += [(4, 16, 16, 1, (16384,), 2048), (2, 8, 8, 1, (128, 128), 63)]
    cases = {}
    for batch, c_in, c_out, groups, spatial, k in rows:
        kind = "depthwise" if groups == c_in else f"{c_in}->{c_out}"
        size = "x".join(map(str, spatial))
        name = f"{len(spatial)}d {kind} k{k} {size} b{batch}"
        cases[name] = (batch, c_in, c_out, groups, spatial, k)
    return cases


def _time(fn: Callable[..., Any], *args: Any, repeats: int, **kwargs: Any) -> float:
    """`median_time` after one warmup call, or that call alone where it took over a
    second (the slow references would otherwise take minutes per row)."""
    start = time.perf_counter()
    kwargs.get("sync", jax.block_until_ready)(fn(*args))
    if time.perf_counter() - start > 1.0:
        repeats = 1
    return median_time(fn, *args, repeats=repeats, warmup=0, **kwargs)


def _first_call(fn: Callable[..., Any], *args: Any) -> float:
    jax.clear_caches()
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(fn)(*args))
    return time.perf_counter() - start


def run_case(case: Case, repeats: int) -> tuple[dict[str, dict[str, float]], str]:
    batch, c_in, c_out, groups, spatial, k = case
    n = len(spatial)
    key_x, key_w = jr.split(jr.key(0), 2)
    x = jr.normal(key_x, (batch, c_in, *spatial), jnp.float32)
    scale = (c_in // groups * k**n) ** -0.5
    w = jr.normal(key_w, (c_out, c_in // groups, *(k,) * n), jnp.float32) * scale
    same = (k - 1,) * n  # total 'SAME' padding at stride 1
    picks = _choose.choose_conv_impl(
        in_channels=c_in,
        out_channels=c_out,
        groups=groups,
        kernel_size=(k,) * n,
        stride=(1,) * n,
        padded_shape=tuple(size + p for size, p in zip(spatial, same, strict=True)),
        out_shape=spatial,
        input_dilation=(1,) * n,
        dtype=x.dtype,
    )
    timings: dict[str, dict[str, float]] = {"fwd": {}, "fwdbwd": {}, "first": {}}
    impls = ("fft", "xla", "shift") if picks == "shift" else ("fft", "xla")
    for impl in impls:

        def apply(x, w, impl=impl):
            def op(x, w):
                return eqxconv.conv(x, w, padding="SAME", groups=groups, impl=impl)

            return jax.vmap(op, in_axes=(0, None))(x, w)

        def loss(x, w, apply=apply):
            return jnp.sum(apply(x, w) ** 2)

        grad = jax.grad(loss, argnums=(0, 1))
        timings["first"][impl] = _first_call(grad, x, w)
        timings["fwd"][impl] = _time(jax.jit(apply), x, w, repeats=repeats)
        timings["fwdbwd"][impl] = _time(jax.jit(grad), x, w, repeats=repeats)

    conv = {1: F.conv1d, 2: F.conv2d}[n]
    xt = torch.from_numpy(np.array(x)).requires_grad_(True)
    wt = torch.from_numpy(np.array(w)).requires_grad_(True)

    def torch_apply():
        return conv(xt, wt, padding="same", groups=groups)

    def torch_fwd():
        with torch.no_grad():
            return torch_apply()

    def torch_fwdbwd():
        xt.grad = wt.grad = None
        (torch_apply() ** 2).sum().backward()
        return wt.grad

    def sync(out):
        return out

    timings["fwd"]["torch"] = _time(torch_fwd, repeats=repeats, sync=sync)
    timings["fwdbwd"]["torch"] = _time(torch_fwdbwd, repeats=repeats, sync=sync)
    return timings, picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="four rows only")
    parser.add_argument("--large", action="store_true", help="add the slowest rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"jax {jax.__version__}, {jax.default_backend()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    tables = {
        "fwd": Table("forward", "xla"),
        "fwdbwd": Table("forward+backward, sum(y ** 2)", "xla"),
        "first": Table("first call (trace + compile + run) of forward+backward", "xla"),
    }
    for name, case in _cases(args.quick, args.large).items():
        timings, picks = run_case(case, args.repeats)
        for kind, table in tables.items():
            table.add(f"{name} (auto: {picks})", timings[kind])
    print(markdown(list(tables.values())))


if __name__ == "__main__":
    main()
