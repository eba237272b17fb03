"""Free loopback ports for the servers the rigs start."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A TCP port free on the loopback interface now, below Linux's ephemeral range (32768-60999).

    Binding port 0 would hand out an ephemeral port, which could meanwhile become some client's local port;
    a connection to it from that client would then connect to itself (TCP simultaneous open) instead of
    being refused.
    """
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port in 20000-32000")
