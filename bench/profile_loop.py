"""The training loop alone, for a profiler: the set-up of figure (1) (bench/throughput.py), one warm-up epoch, then
timed epochs, each line the steady figures of one epoch.

    py-spy record -r 200 -f raw -o loop.txt -- .venv/bin/python -m bench.profile_loop cifar10_simple_cnn 48 6

Aggregate the stacks under `Loop.run_epoch` by the line they leave it from to see where the host's time goes
(docs/performance.md, *Training loop*).
"""
from __future__ import annotations

import argparse

from bench.settings import FULL
from bench.throughput import setup_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="a preset, e.g. cifar10_simple_cnn")
    parser.add_argument("steps", type=int, help="steps per epoch (at least 3)")
    parser.add_argument("epochs", type=int, nargs="?", default=6, help="timed epochs after the warm-up")
    args = parser.parse_args()
    overrides = ["data.synthetic_examples=10240", *FULL.loop_vs_fit_overrides]
    trial = setup_loop(args.preset, overrides, args.steps).trials["loop"]
    trial()  # tracing and first allocations
    for _ in range(args.epochs):
        figures = trial()
        print(f"{figures['images_per_second']:.0f} img/s, step {figures['step_seconds'] * 1e3:.1f} ms, "
              f"host between steps {figures.get('host_seconds_per_step', 0) * 1e3:.2f} ms, "
              f"epoch start-up and end {figures['epoch_overhead_seconds']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
