"""How much of the server one client, and all clients together, may hold at once.

Each phase a connection goes through has its own budget: connections, requests whose
headers are still arriving, bodies still arriving, open event streams. A slow or greedy
client exhausts its own share (per IP) or, with many IPs, the phase's total; never the
threads that answer /health, status polls and submissions. Behind a proxy every client
has the proxy's address, so the per-IP caps act as a second total.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    connections: int = 4096
    connections_per_ip: int = 1024
    awaiting_headers: int = 1024  # connections whose request line and headers are arriving
    awaiting_headers_per_ip: int = 256
    header_seconds: float = 10.0  # from the first byte (or the connection) to the blank line
    header_bytes: int = 64 * 1024  # request line and headers
    bodies: int = 256  # request bodies being received
    bodies_per_ip: int = 64
    body_bytes: int = 2**30  # held in memory by bodies being received or handled
    body_grace_seconds: float = 10.0  # then a body must average body_min_rate
    body_min_rate: int = 32 * 1024  # bytes per second
    streams: int = 1024  # open GET /job/<id>/events
    streams_per_ip: int = 256


class Refused(Exception):
    """A budget is spent: 429 if this client's share, 503 if everyone's."""

    def __init__(self, what: str, per_ip: bool):
        super().__init__(f"too many {what} {'from your address' if per_ip else 'open'}; "
                         "retry later")
        self.status = 429 if per_ip else 503


class Budget:
    """A count per client IP and in total, each capped. The event loop's thread is the only
    one that touches it, so it needs no lock."""

    def __init__(self, what: str, total: int, per_ip: int):
        self.what, self.total, self.per_ip = what, total, per_ip
        self._held: Counter[str] = Counter()
        self.open = 0

    def take(self, ip: str) -> None:
        if self._held[ip] >= self.per_ip:
            raise Refused(self.what, per_ip=True)
        if self.open >= self.total:
            raise Refused(self.what, per_ip=False)
        self._held[ip] += 1
        self.open += 1

    def give_back(self, ip: str) -> None:
        self.open -= 1
        self._held[ip] -= 1
        if not self._held[ip]:
            del self._held[ip]


class Budgets:
    """The server's budgets, one per phase."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.connections = Budget("connections", limits.connections, limits.connections_per_ip)
        self.headers = Budget("requests still sending headers", limits.awaiting_headers,
                              limits.awaiting_headers_per_ip)
        self.bodies = Budget("request bodies still arriving", limits.bodies,
                             limits.bodies_per_ip)
        self.streams = Budget("event streams", limits.streams, limits.streams_per_ip)
        self.body_bytes = 0  # held now, against limits.body_bytes
