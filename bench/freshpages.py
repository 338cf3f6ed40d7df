#!/usr/bin/env python3
"""What a first touch of new memory costs on this machine, and a way to change it.

    python3 bench/freshpages.py probe [MIB]     µs per page to first touch MIB (4) MiB
    python3 bench/freshpages.py drain           take (and hold) the free pages the host
                                                still backs, until SIGTERM or Ctrl-C
    python3 bench/freshpages.py reback [MIB]    touch MIB (1024) MiB once and free it

This box is a VM whose guest kernel reports free memory back to the host
(`/sys/module/page_reporting`, min_free_ms 0): a page the guest gave back costs the host a
fault, and the guest about 12 µs, the first time it is touched again; a page freed
recently and not yet given back costs about 1.5 µs. While the kernel still has such pages,
new allocations get them first. Once they are used up (a few hundred processes started,
say), everything that touches new memory slows: a worker's boot, which touches about
1,400 new pages without preload and about 500 with it, takes about 15 and 5 ms longer
(bench/README.md, density). `drain` puts the box in that state on purpose, `reback` takes
it out (its pages, once freed, are ones the host backs), `probe` says which state it is
in. They only allocate and free this process's own memory.
"""
from __future__ import annotations

import mmap
import signal
import sys
import time

PAGE = mmap.PAGESIZE


def touch(mib: int) -> tuple[mmap.mmap, float]:
    """Maps `mib` MiB of private anonymous memory and writes one byte per page. Returns
    (the mapping, still mapped; µs per page)."""
    n = mib << 20
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    t0 = time.perf_counter()
    for i in range(0, n, PAGE):
        m[i] = 1
    return m, (time.perf_counter() - t0) * 1e6 / (n // PAGE)


def probe(mib: int = 4) -> float:
    """µs to first touch one page of `mib` MiB of new memory, rounded to 0.01; the
    memory is freed again."""
    m, us = touch(mib)
    m.close()
    return round(us, 2)


def reback(mib: int = 1024) -> float:
    """probe(mib) for its side effect: the kernel's next allocations get the pages it
    touched and freed, which the host now backs. Returns what they cost (µs per page)."""
    return probe(mib)


def drain(slow_us: float = 6.0, chunk_mib: int = 64, slow_chunks: int = 8,
          most_mib: int = 16384) -> tuple[list, float]:
    """Touches `chunk_mib` chunks and keeps them until `slow_chunks` of them cost more
    than `slow_us` per page (or `most_mib` are held). Returns (the mappings, the last
    chunk's µs per page)."""
    held: list = []
    slow, us = 0, 0.0
    while slow < slow_chunks and len(held) * chunk_mib < most_mib:
        m, us = touch(chunk_mib)
        held.append(m)
        slow += us > slow_us
    return held, us


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("probe", "drain", "reback"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if argv[0] == "probe":
        print(f"fresh page {probe(int(argv[1]) if len(argv) > 1 else 4)} us")
    elif argv[0] == "reback":
        us = reback(int(argv[1]) if len(argv) > 1 else 1024)
        print(f"touched and freed; it cost {us:.2f} us per page")
    else:
        held, us = drain()
        print(f"holding {len(held) * 64} MiB; the last pages cost {us:.2f} us each "
              f"(now: {probe()} us)", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
