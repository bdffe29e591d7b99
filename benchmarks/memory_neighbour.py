"""A memory-bandwidth neighbour for the streaming benchmark: one thread copying 256 MiB arrays
for ever, which keeps the shared L3 cache and the memory bus busy, as another tenant's job on
the same host would. Pin it to one core and the benchmark to the other::

    taskset -c 1 python benchmarks/memory_neighbour.py &
    OMP_NUM_THREADS=1 taskset -c 0 gigastream bench streaming --arch resnet34 --size 3072 \\
        --tile 1024 --modes conventional,streaming --out neighbour.json
    kill %1

It prints its copy rate (GiB/s, read + write) every 50 copies.
"""

from __future__ import annotations

import time

import numpy as np


def main() -> None:
    source = np.ones(2**25)  # 256 MiB of float64
    target = np.empty_like(source)
    copies, start = 0, time.time()
    while True:
        np.copyto(target, source)
        copies += 1
        if copies % 50 == 0:
            rate = copies * 2 * source.nbytes / (time.time() - start) / 2**30
            print(f"{rate:.1f} GiB/s", flush=True)


if __name__ == "__main__":
    main()
