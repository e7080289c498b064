"""Patch extraction and folding: eqxconv against `lax.conv_general_dilated_patches` and
torch `F.unfold`/`F.fold`, batch 8 on CPU.

Times forward, forward+backward (the gradient of `sum(y * r)` for a fixed random `r`,
so the backward is real, and of `sum(y ** 2)`, whose backward needs the forward: the
patches then feed two consumers) and cold compile; peak memory is what XLA plans for
the jitted forward+backward (arguments + outputs + temporaries). Run with
`python -m benchmarks.patches`; the ratios are time / eqxconv's.
"""

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._timing import (
    compile_seconds,
    markdown,
    median_time,
    peak_bytes,
    Table,
)
from eqxconv import extract_patches, fold_patches


def _loss_grad(fn: Callable[[jax.Array], jax.Array]) -> Callable[..., Any]:
    """The value and gradient of `sum(fn(x) * r)` with respect to `x` (not jitted):
    the value forces the forward pass, which the gradient of a linear map skips."""
    return jax.value_and_grad(lambda x, r: jnp.sum(fn(x) * r))


def _grad_of(fn: Callable[[jax.Array], jax.Array]) -> Callable[..., Any]:
    return jax.jit(_loss_grad(fn))


def _square_grad_of(fn: Callable[[jax.Array], jax.Array]) -> Callable[..., Any]:
    """The jitted value and gradient of `sum(fn(x) ** 2)`."""
    return jax.jit(jax.value_and_grad(lambda x: jnp.sum(fn(x) ** 2)))


def _torch_grad(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def run(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        loss = (fn(x) * r).sum()
        loss.backward()
        assert x.grad is not None
        return loss

    return run


def _no_sync(out: Any) -> Any:
    return out


def _time(fn: Callable[..., Any], *args: Any, repeats: int, **kwargs: Any) -> float:
    """`median_time`, with only 3 repeats for calls slower than a second (lax's
    patches backward), so that the script finishes in minutes."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if time.perf_counter() - start > 1.0:
        repeats = 3
    return median_time(fn, *args, repeats=repeats, warmup=1, **kwargs)


def extract_case(
    name: str,
    shape: tuple[int, ...],
    k: int,
    s: int,
    p: int,
    tables: dict[str, Table],
    repeats: int,
) -> None:
    n = len(shape) - 2
    xs = jr.normal(jr.key(0), shape)
    ks, ss = (k,) * n, (s,) * n
    pairs = ((p, p),) * n

    def ours(x: jax.Array) -> jax.Array:
        return jax.vmap(lambda x: extract_patches(x, ks, stride=s, padding=p))(x)

    def per_offset(x: jax.Array) -> jax.Array:
        return jax.vmap(
            lambda x: extract_patches(x, ks, stride=ss, padding=pairs, impl="slices")
        )(x)

    def lax_patches(x: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated_patches(x, ks, ss, pairs)

    variants: dict[str, Callable[[jax.Array], jax.Array]] = {"eqxconv": ours}
    if k != s:
        variants["eqxconv-slices"] = per_offset  # the alternative lowering
    variants["lax"] = lax_patches
    r = jr.normal(jr.key(1), ours(xs).shape)
    fwd, both, square, comp, mem = {}, {}, {}, {}, {}
    for label, fn in variants.items():
        fwd[label] = _time(jax.jit(fn), xs, repeats=repeats)
        grad = _grad_of(fn)
        both[label] = _time(grad, xs, r, repeats=repeats)
        square[label] = _time(_square_grad_of(fn), xs, repeats=repeats)
        comp[label] = compile_seconds(_loss_grad(fn), xs, r)
        mem[label] = peak_bytes(_loss_grad(fn), xs, r)
    if n == 2:
        xt = torch.from_numpy(np.array(xs))
        rt = torch.from_numpy(np.array(r)).reshape(shape[0], r.shape[1], -1)

        def unfold(x: torch.Tensor) -> torch.Tensor:
            return F.unfold(x, k, padding=p, stride=s)

        with torch.no_grad():
            fwd["torch"] = median_time(unfold, xt, repeats=repeats, sync=_no_sync)
        both["torch"] = median_time(
            _torch_grad(unfold), xt, rt, repeats=repeats, sync=_no_sync
        )
    tables["fwd"].add(name, fwd)
    tables["fwd+bwd"].add(name, both)
    tables["fwd+bwd sum(y ** 2)"].add(name, square)
    tables["compile"].add(name, comp)
    # Table prints seconds as ms: store MiB / 1000 so that the "ms" figure reads MiB.
    tables["peak"].add(name, mem)


def fold_case(
    name: str,
    shape: tuple[int, ...],
    k: int,
    s: int,
    tables: dict[str, Table],
    repeats: int,
) -> None:
    batch, channels, *spatial = shape
    grid = [(size - k) // s + 1 for size in spatial]
    ps = jr.normal(jr.key(0), (batch, channels * k * k, *grid))
    r = jr.normal(jr.key(1), shape)

    def ours(p: jax.Array) -> jax.Array:
        return jax.vmap(lambda p: fold_patches(p, spatial, k, stride=s))(p)

    def lax_adjoint(p: jax.Array) -> jax.Array:
        def patches(x: jax.Array) -> jax.Array:
            return jax.lax.conv_general_dilated_patches(x, (k, k), (s, s), "VALID")

        return jax.linear_transpose(patches, jnp.zeros(shape))(p)[0]

    fwd, both, square = {}, {}, {}
    for label, fn in {"eqxconv": ours, "lax-transpose": lax_adjoint}.items():
        fwd[label] = _time(jax.jit(fn), ps, repeats=repeats)
        both[label] = _time(_grad_of(fn), ps, r, repeats=repeats)
        square[label] = _time(_square_grad_of(fn), ps, repeats=repeats)
    pt = torch.from_numpy(np.array(ps)).reshape(batch, ps.shape[1], -1)
    rt = torch.from_numpy(np.array(r))

    def fold(p: torch.Tensor) -> torch.Tensor:
        return F.fold(p, tuple(spatial), k, stride=s)

    with torch.no_grad():
        fwd["torch"] = median_time(fold, pt, repeats=repeats, sync=_no_sync)
    both["torch"] = median_time(
        _torch_grad(fold), pt, rt, repeats=repeats, sync=_no_sync
    )
    tables["fold fwd"].add(name, fwd)
    tables["fold fwd+bwd"].add(name, both)
    tables["fold fwd+bwd sum(y ** 2)"].add(name, square)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    titles = ["fwd", "fwd+bwd", "fwd+bwd sum(y ** 2)", "compile", "peak"]
    titles += ["fold fwd", "fold fwd+bwd", "fold fwd+bwd sum(y ** 2)"]
    tables = {t: Table(f"patches {t}", "eqxconv", memory=t == "peak") for t in titles}
    tables["compile"].title = "patches cold compile of jitted fwd+bwd"
    tables["peak"].title = "patches peak memory of jitted fwd+bwd"
    cases = [
        ("ViT patchify 3x224x224 k=s=16", (8, 3, 224, 224), 16, 16, 0),
        ("overlap C=16 64x64 k=3 s=1 p=1", (8, 16, 64, 64), 3, 1, 1),
        ("overlap C=8 64x64 k=4 s=2 p=1", (8, 8, 64, 64), 4, 2, 1),
        ("overlap 3D C=4 16^3 k=3 s=1", (8, 4, 16, 16, 16), 3, 1, 0),
    ]
    for name, shape, k, s, p in cases:
        print(f"\n-- {name}", flush=True)
        extract_case(name, shape, k, s, p, tables, args.repeats)
    folds = [
        ("ViT unpatchify 3x224x224 k=s=16", (8, 3, 224, 224), 16, 16),
        ("overlap fold C=16 64x64 k=3 s=1", (8, 16, 64, 64), 3, 1),
    ]
    for name, shape, k, s in folds:
        print(f"\n-- {name}", flush=True)
        fold_case(name, shape, k, s, tables, args.repeats)
    times = [tables[t] for t in titles if t != "peak"]
    print(markdown(times))
    print(markdown([tables["peak"]]))


if __name__ == "__main__":
    main()
