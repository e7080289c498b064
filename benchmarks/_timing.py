"""Shared timing helpers for the benchmark scripts (not tests: no thresholds here).

Every number is a median over repeats of an already compiled, warmed-up function,
with `block_until_ready` on JAX outputs, measured side by side in one process.
"""

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax


def _block(out: Any) -> Any:
    return jax.block_until_ready(out)


def median_time(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 15,
    warmup: int = 2,
    sync: Callable[[Any], Any] = _block,
) -> float:
    """Median wall time in seconds of `fn(*args)` after `warmup` calls."""
    for _ in range(warmup):
        sync(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_times(
    calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]],
    *,
    repeats: int = 15,
    warmup: int = 2,
    sync: Callable[[Any], Any] = _block,
) -> dict[str, float]:
    """Median wall time in seconds of each `fn(*args)` in `calls`, timed in turns
    (one call of each per round) so that a change in the machine's load falls on all
    of them alike, not on whichever ran last. Each round takes the calls in a fresh
    order (seeded): a call that leaves large buffers behind slows the one after it,
    which in a fixed order would always be the same one."""
    for fn, args in calls.values():
        for _ in range(warmup):
            sync(fn(*args))
    times: dict[str, list[float]] = {label: [] for label in calls}
    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for label in order:
            fn, args = calls[label]
            start = time.perf_counter()
            sync(fn(*args))
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(ts) for label, ts in times.items()}


def compile_seconds(fn: Callable[..., Any], *args: Any, repeats: int = 3) -> float:
    """Cold lowering + compile time of `jax.jit(fn)` on `args` (caches cleared before
    each try), the median of `repeats` tries: one cold compile varies by 1.5x here."""
    times = []
    for _ in range(repeats):
        jax.clear_caches()
        start = time.perf_counter()
        jax.jit(fn).lower(*args).compile()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn: Callable[..., Any], *args: Any) -> int:
    """Peak memory XLA plans for `jax.jit(fn)`: arguments + outputs + temporaries."""
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:
        return -1
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


@dataclass
class Table:
    """Rows of `name -> value` per case (seconds, or bytes with `memory=True`);
    prints them (as ms or MiB) with ratios to a reference."""

    title: str
    reference: str
    memory: bool = False
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)

    @property
    def quantity(self) -> str:
        return "memory" if self.memory else "time"

    def cell(self, value: float) -> str:
        if self.memory:
            return f"{value / 2**20:.2f} MiB"
        return f"{value * 1e3:.2f} ms"

    def add(self, case: str, timings: dict[str, float]) -> None:
        self.rows.append((case, timings))
        self._print_row(case, timings)

    def _print_row(self, case: str, timings: dict[str, float]) -> None:
        ref = timings.get(self.reference)
        cells = []
        for name, value in timings.items():
            ratio = f" ({value / ref:.2f}x)" if ref else ""
            cells.append(f"{name} {self.cell(value)}{ratio}")
        print(f"  {case} [{self.title}]: " + " | ".join(cells), flush=True)

    def header(self) -> None:
        print(
            f"\n== {self.title} (ratios are {self.quantity} / {self.reference}) ==",
            flush=True,
        )


def markdown(tables: Sequence[Table]) -> str:
    """All tables as one Markdown table per title, for notes and docs."""
    lines = []
    for table in tables:
        names = list(dict.fromkeys(n for _, t in table.rows for n in t))
        lines += [
            f"\n**{table.title}** (ratio: {table.quantity} / {table.reference})\n"
        ]
        lines += ["| case | " + " | ".join(names) + " |"]
        lines += ["|---" * (len(names) + 1) + "|"]
        for case, timings in table.rows:
            ref = timings.get(table.reference)
            cells = []
            for name in names:
                if name not in timings:
                    cells.append("")
                    continue
                ratio = f" ({timings[name] / ref:.2f}x)" if ref else ""
                cells.append(f"{table.cell(timings[name])}{ratio}")
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
