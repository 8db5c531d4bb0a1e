#!/usr/bin/env python3
"""awqgemm GEMM benchmark: time / floor, speedup over dense cuBLAS and over TurboMind.

The entry point only: ``python3 benchmarks/gemm.py --help`` lists the options; the code, and the
method in its docstring, live in the ``awqbench`` package next to this file (``awqbench/cli.py``).
"""

import sys

from awqbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
