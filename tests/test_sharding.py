"""Layers on inputs sharded along spatial axes, on 8 simulated host devices.

The checks run in subprocesses (`tests/sharding_cases.py`), which ask XLA for 8 host
devices before JAX starts, so that the rest of the suite keeps one device. From each
layer's compiled forward and gradient programs (HLO text) they count the
collectives: no all-gather, at most twice the collective-permutes of XLA's dense
convolution of the same geometry, the output split as the input is, and the values
of the unsharded call. Automatic mode is held to that budget only where it keeps
within it (`Case.auto`); explicit mode everywhere.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "tests.sharding_cases", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line]


def _check(result: dict) -> list[str]:
    name = f"{result['name']} ({result['mode']})"
    if "raised" in result:
        return [f"{name} raised {result['raised']}"]
    failures = []
    for program in ("fwd", "grad"):
        got, dense = result[program], result[f"dense_{program}"]
        if got["all-gather"] or got["all-to-all"]:
            failures.append(f"{name} {program} gathers: {got}")
        if got["collective-permute"] > 2 * dense["collective-permute"]:
            failures.append(f"{name} {program}: {got}, XLA's dense conv {dense}")
    if not result["kept_sharding"]:
        failures.append(f"{name}: output split as {result['out_spec']}")
    if result["error"] > 1e-5:
        failures.append(f"{name}: relative error {result['error']}")
    return failures


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_spatially_sharded_layers_keep_within_budget(mode):
    results = _run(mode, "budgeted")
    assert len(results) >= 8
    failures = [failure for result in results for failure in _check(result)]
    assert not failures, "\n".join(failures)
    if mode == "explicit":
        for result in results:
            # The type of the output names the input's split.
            split = [name for name in result["out_spec"] if name != "None"]
            assert all(f"'{name}'" in result["typed_spec"] for name in split), result


def test_unsplittable_inputs_raise_rather_than_gather():
    results = {r["name"]: r["raised"] for r in _run("refusals")}
    assert "more than a shard of 4 holds" in results["halo"]
    assert "stride (3) to divide the shard size" in results["stride"]
    assert "input dilation" in results["input_dilation"]
    for message in results.values():
        assert "reshard" in message
