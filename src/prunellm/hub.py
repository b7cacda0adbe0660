"""Whether the Hugging Face hub can be reached: this machine may be offline, and hub calls then retry for long."""

from __future__ import annotations

import os
import socket


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if `HF_HUB_OFFLINE` is unset and huggingface.co answers a TCP connection within `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
