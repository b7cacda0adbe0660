"""Resident-memory readings for reports: the process peak, resettable on Linux so a step is measured alone."""

from __future__ import annotations

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
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
