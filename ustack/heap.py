"""Heap tuning for processes that are ustack's own (the `ustack` command, benchmarks):
never done by the library on its own, since it changes the whole process."""

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
_HEAP_KEPT = 64 * 1024 * 1024


def keep_freed_heap() -> None:
    """Ask glibc to keep freed memory instead of returning it to the OS at once: a
    process-wide setting, so the library never makes it on its own; the `ustack`
    command does, and a program that moves bulk data through a Stack may call this.

    By default it trims the heap whenever 128 KB lie free at its top. The fast path
    allocates and frees 64 KB buffers (segments, the user's chunks) thousands of times a
    second; with trimming each of them page-faults anew (measured: ~200,000 minor faults
    and a third of the CPU for 500 MB sent). Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)  # also fixes the trim threshold
        libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_KEPT)
    except (OSError, AttributeError):
        pass
