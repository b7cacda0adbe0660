"""Resident-memory readings for reports: the process peak, resettable on Linux so a step is measured alone."""

from __future__ import annotations

import ctypes
import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def current_rss_mb() -> float:
    """Resident memory now (MiB); 0 where /proc is unavailable."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory since start or since the last `reset_peak_rss()` (MiB)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Restart the peak at the current RSS (Linux `clear_refs` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float:
    return _field_mb(_STATUS, field)


def available_mb() -> float:
    """Memory this process can still use (MiB): MemAvailable, capped by a cgroup limit; 0 if unknown."""
    free = _meminfo_mb("MemAvailable")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
            usage_path = Path(path).with_name("memory.current" if path.endswith("max") else "memory.usage_in_bytes")
            if limit.isdigit() and int(limit) < 1 << 60:
                left = (int(limit) - int(usage_path.read_text())) / 2**20
                free = min(free, left) if free else left
            break
        except (OSError, ValueError):
            continue
    return max(free, 0.0)


def _meminfo_mb(field: str) -> float:
    return _field_mb(Path("/proc/meminfo"), field)


def _field_mb(path: Path, field: str) -> float:
    """A `Name:  N kB` line of a /proc file, in MiB; 0 when missing."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`), so resident memory tracks live tensors.

    Without it, glibc keeps the pages of freed multi-MB tensors in its heap after the first few (its mmap
    threshold grows), and a block-by-block loop's RSS creeps up by a block's size now and then."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None
