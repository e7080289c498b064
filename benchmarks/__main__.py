"""Run every benchmark on whatever device JAX finds, and write the tables.

`python -m benchmarks --all [--quick]` runs each script in a fresh process (so that
one script's compiled caches do not flatter the next) and writes its output to
`benchmarks/results/<backend>-<device kind>/<script>.md`, with the device in the
first line; `python -m benchmarks models auto` runs the named ones. A GPU run is
this one command on a machine with a GPU.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import jax


SCRIPTS = (
    "models",
    "auto",
    "conv_patches",
    "stems",
    "conv",
    "depthwise",
    "conv_transpose",
    "patches",
    "local",
    "input_dilation",
    "fft",
)
# The scripts that take `--quick`.
QUICK = {"models", "auto", "conv_patches", "stems", "conv", "input_dilation", "fft"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scripts", nargs="*", help=f"any of {', '.join(SCRIPTS)}")
    parser.add_argument("--all", action="store_true", help="every script")
    parser.add_argument("--quick", action="store_true", help="fewer rows/repeats")
    args = parser.parse_args()
    names = SCRIPTS if args.all else tuple(args.scripts)
    if not names:
        parser.error("name scripts to run, or pass --all")
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown scripts {unknown}; choose from {', '.join(SCRIPTS)}")
    device = jax.devices()[0]
    label = f"{jax.default_backend()}-{device.device_kind}".replace(" ", "_")
    out_dir = Path(__file__).parent / "results" / label
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        command = [sys.executable, "-m", f"benchmarks.{name}"]
        if args.quick and name in QUICK:
            command.append("--quick")
        print(f"+ {' '.join(command)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        header = (
            f"device: {device.device_kind} ({jax.default_backend()}); {seconds:.0f} s\n"
        )
        (out_dir / f"{name}.md").write_text(header + result.stdout + result.stderr)
        print(result.stdout[-2000:], flush=True)
        if result.returncode != 0:
            failed.append(name)
            print(result.stderr[-2000:], file=sys.stderr, flush=True)
    print(f"tables in {out_dir}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
