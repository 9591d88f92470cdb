#!/usr/bin/env python
"""Plot a MOMETAS run's sampler history: sampling probabilities, average weights (Figure 2),
validation losses and cumulative reward, optionally against a uniform baseline (Figure 3).

    python plot_sampler_history.py RUN_DIR [--baseline UNIFORM_RUN_DIR] [--output_dir DIR]

Same as ``python -m mometas_utils.reporting``; ``-h`` lists the options.
"""

import logging
import sys

from mometas_utils.reporting import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sys.exit(main(prog="plot_sampler_history.py"))
