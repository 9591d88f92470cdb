#!/usr/bin/env python
"""Plot a MOMETAS run's sampler history: the sampling probabilities per objective (probabilities.png), the
average sampling weights over training (average_weights.png, Figure 2 of the paper), the meta-test validation
losses (validation_loss.png) and the cumulative reward R(τ) (cumulative_reward.png; with --baseline also the
difference run minus baseline, Figure 3). Prints the learned average distribution.

    python plot_sampler_history.py RUN_DIR [--baseline UNIFORM_RUN_DIR] [--output_dir DIR]
"""

import argparse
import logging
import sys
from pathlib import Path

from mometas_utils.errors import MometasInputError
from mometas_utils.history import read_history, summarize_distribution
from mometas_utils.plots import PLOT_FILENAMES, plot_history


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a training run, or its sampler_history.jsonl")
    parser.add_argument("--baseline", metavar="UNIFORM_RUN_DIR", default=None,
                        help="a comparison run (e.g. uniform sampling) to subtract in the reward plot")
    parser.add_argument("--output_dir", metavar="DIR", default=None, help="where to write the PNGs (default: RUN_DIR/plots)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        try:
            rows = read_history(args.run_dir)
        except MometasInputError as exc:
            raise MometasInputError(f"RUN_DIR: {exc}") from None
        baseline = None
        if args.baseline is not None:
            try:
                baseline = read_history(args.baseline)
            except MometasInputError as exc:
                raise MometasInputError(f"--baseline: {exc}") from None
        run = Path(args.run_dir)
        output_dir = Path(args.output_dir) if args.output_dir else (run if run.is_dir() else run.parent) / "plots"
        written = plot_history(rows, output_dir, baseline_rows=baseline)
    except MometasInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summarize_distribution(rows))
    print()
    for path in written:
        print(f"wrote {path}")
    for name in PLOT_FILENAMES:
        if output_dir / name not in written:
            print(f"skipped {name}: the history has no data for it")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sys.exit(main())
