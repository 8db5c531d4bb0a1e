"""awqgemm's GEMM benchmark, run as ``python3 benchmarks/gemm.py`` (options and method: ``cli.py``).

Modules, in the order a run uses them:

* ``shapes``: the models' layer shapes, the M sweeps and group sizes, bytes and floor arithmetic;
* ``timing``: the CUDA-graph timer, the dry run's fake timer, eager timing, the HBM / MMA ceilings;
* ``contenders``: awqgemm (auto and forced paths), dense cuBLAS, TurboMind, vLLM's Machete and Marlin;
* ``sweep``: the order of (shape, group, dtype) blocks, a modeled run time, measuring one block;
* ``report``: rows and derived metrics, the text tables, the targets, the JSON result;
* ``plots``: the PNGs (matplotlib);
* ``cli``: the command line and the run itself.

Only awqgemm's public API is used: ``pack_awq``, ``gemm``, ``dequantize_awq``, ``plan_info``,
``build_info``, ``have_cuda_kernels``, ``testing.force`` and ``testing.random_awq``.
"""
