#!/usr/bin/env python
"""Phase I grid: CQL and IQL under top-k% trajectory removal (and reward noise).

    python run_phase1.py --quick --algo iql          # embedded generated data, minutes on a CPU
    python run_phase1.py --device auto               # the full grid (see README)
    python run_phase1.py --plot_only                 # figures and tables from results/

All flags: python run_phase1.py --help. Equivalent to `hybrid-rl grid`.
"""
import sys

from hybrid_rl.cli import phase1_main

if __name__ == "__main__":
    sys.exit(phase1_main())
