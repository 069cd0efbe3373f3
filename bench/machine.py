"""What the benchmark ran on: the CPU model, its cores and whether it has AVX-512.

The last matters: numpy's float64 exp is vectorised only with AVX-512, so the same code ran 2–3× slower per
token on a 2-core AVX2 AMD EPYC than on the 2-core AVX-512 Xeon of earlier sessions (bench/README.md).
"""

from __future__ import annotations

import os
import platform


def cpu() -> str:
    """e.g. 'AMD EPYC, 2 cores, AVX2 (no AVX-512)'; from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2 (no AVX-512)" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {simd}"
