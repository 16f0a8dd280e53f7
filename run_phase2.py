#!/usr/bin/env python
"""Phase II study: fine-tune agents pretrained on damaged data online, and measure recovery.

    python run_phase2.py --quick                     # embedded generated data, minutes on a CPU
    python run_phase2.py --device auto               # the study (3 seeds, 250k online steps)
    python run_phase2.py --plot_only                 # recovery figures and tables from results_phase2/

All flags: python run_phase2.py --help. Equivalent to `hybrid-rl phase2`.
"""
import sys

from hybrid_rl.cli import phase2_main

if __name__ == "__main__":
    sys.exit(phase2_main())
