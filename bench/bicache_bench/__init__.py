"""The bicache benchmark harness: one driver (bench/run.py), one implementation of every
system, dataset, workload, counter and report; scenarios in bench/scenarios/.

Modules:
    util      logging, child processes, mounts, page cache, sizes
    build     the binaries under test, the bicache commit
    data      seeded dataset components, cached on disk, and the roots made of them
    systems   native, bindfs, slowfs, rclone, bicache: started, always torn down
    work      the workloads (also a CLI: python3 -m bicache_bench.work ...)
    harness   the Bench object scenarios use, the driver's main()
    report    results, medians, ratios, markdown tables, doc sections
"""

import pathlib

BENCH = pathlib.Path(__file__).resolve().parent.parent
REPO = BENCH.parent
