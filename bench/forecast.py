"""One-process baselines of the forecaster workload (the paper's Table 1); the
code is continuum_dev.baselines (what ``continuum demo`` runs).

    python -m bench.forecast local --seed 0 --epochs 100 --threads 1
    python -m bench.forecast plain --seed 0 --epochs 100 --threads 1
"""

from __future__ import annotations

import sys

from continuum_dev.baselines import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m bench.forecast"))
