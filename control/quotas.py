"""Per-IP quotas of the control process (pure: time is an argument).

Every table is keyed by client IP (or IP and room) and bounded, with its worst case:

* concurrent connections: one int per IP with an open connection; entries go when the
  count returns to 0, so at most one per open connection (bounded by the fd limit).
* new-connection token buckets: ``MAX_TRACKED_IPS`` entries × ~150 bytes ≈ 10 MB; when
  full, the whole table is dropped (a flood from many IPs then resets buckets, which is
  the safe direction: the per-IP concurrency cap still holds).
* failed passwords: ``MAX_TRACKED_IPS`` (ip, room) entries of at most
  ``max_password_failures`` timestamps each; expired entries are pruned when full.
* rooms hosted per IP: one int per IP hosting a live room (bounded by the room count).
* key derivations (scrypt) per IP: token buckets like the request buckets, same bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

MAX_TRACKED_IPS: Final = 65_536


def retry_seconds(wait: float) -> int:
    """A wait as said in a RATE_LIMITED answer ("retry in N s"): whole seconds, at least 1."""
    return max(1, math.ceil(wait))


@dataclass
class QuotaSettings:
    max_conns_per_ip: int
    conn_rate_per_ip: float
    max_password_failures: int
    password_failure_window: float
    max_rooms_per_ip: int
    kdf_rate_per_ip: float = 50.0
    """Key derivations (scrypt) started per second per IP, token bucket, burst = rate."""
    kdf_concurrency_per_ip: int = 1
    """Key derivations of one IP running (or queued for a thread) at once."""
    kdf_queue: int = 32
    """Key derivations, over all IPs, that may wait for a thread."""


class Quotas:
    def __init__(self, settings: QuotaSettings) -> None:
        self.settings = settings
        self.conns: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._failures: dict[tuple[str, str], list[float]] = {}
        self.rooms: dict[str, int] = {}
        self._kdf_buckets: dict[str, tuple[float, float]] = {}
        self.refused: dict[str, int] = {"conns": 0, "conn_rate": 0, "password": 0, "rooms": 0,
                                        "kdf_rate": 0}

    # --- connections -------------------------------------------------------------------
    def open_connection(self, ip: str) -> bool:
        """Count a new connection; False if the IP already has too many open."""
        count = self.conns.get(ip, 0)
        if count >= self.settings.max_conns_per_ip:
            self.refused["conns"] += 1
            return False
        self.conns[ip] = count + 1
        return True

    def close_connection(self, ip: str) -> None:
        count = self.conns.get(ip, 0) - 1
        if count > 0:
            self.conns[ip] = count
        else:
            self.conns.pop(ip, None)

    def allow_request(self, ip: str, now: float) -> bool:
        """Token bucket of ``conn_rate_per_ip`` requests/s (burst = rate) per IP."""
        if _take(self._buckets, ip, self.settings.conn_rate_per_ip, now):
            return True
        self.refused["conn_rate"] += 1
        return False

    def allow_kdf(self, ip: str, now: float) -> bool:
        """Token bucket of ``kdf_rate_per_ip`` key derivations/s (burst = rate) per IP."""
        if _take(self._kdf_buckets, ip, self.settings.kdf_rate_per_ip, now):
            return True
        self.refused["kdf_rate"] += 1
        return False

    def request_retry_after(self, ip: str, now: float) -> float:
        """Seconds until ``allow_request`` would let ``ip`` in again (0 if it would now)."""
        return _wait(self._buckets, ip, self.settings.conn_rate_per_ip, now)

    def kdf_retry_after(self, ip: str, now: float) -> float:
        """Seconds until ``allow_kdf`` would let ``ip`` in again (0 if it would now)."""
        return _wait(self._kdf_buckets, ip, self.settings.kdf_rate_per_ip, now)

    # --- passwords ---------------------------------------------------------------------
    def password_blocked(self, ip: str, room: str, now: float) -> bool:
        """True while (ip, room) has ``max_password_failures`` failures in the window."""
        times = self._failures.get((ip, room))
        if not times:
            return False
        horizon = now - self.settings.password_failure_window
        while times and times[0] <= horizon:
            times.pop(0)
        if not times:
            del self._failures[(ip, room)]
            return False
        if len(times) >= self.settings.max_password_failures:
            self.refused["password"] += 1
            return True
        return False

    def password_retry_after(self, ip: str, room: str, now: float) -> float:
        """Seconds until (ip, room) is no longer blocked (0 if it is not)."""
        times = self._failures.get((ip, room))
        if not times or len(times) < self.settings.max_password_failures:
            return 0.0
        return max(0.0, times[-self.settings.max_password_failures]
                   + self.settings.password_failure_window - now)

    def password_failed(self, ip: str, room: str, now: float) -> None:
        key = (ip, room)
        if key not in self._failures and len(self._failures) >= MAX_TRACKED_IPS:
            horizon = now - self.settings.password_failure_window
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > horizon}
            if len(self._failures) >= MAX_TRACKED_IPS:
                return  # still full of live entries: do not grow
        times = self._failures.setdefault(key, [])
        times.append(now)
        del times[: -self.settings.max_password_failures]

    # --- rooms ---------------------------------------------------------------------------
    def may_host(self, ip: str) -> bool:
        if self.rooms.get(ip, 0) >= self.settings.max_rooms_per_ip:
            self.refused["rooms"] += 1
            return False
        return True

    def room_opened(self, ip: str) -> None:
        self.rooms[ip] = self.rooms.get(ip, 0) + 1

    def room_closed(self, ip: str) -> None:
        count = self.rooms.get(ip, 0) - 1
        if count > 0:
            self.rooms[ip] = count
        else:
            self.rooms.pop(ip, None)


def _take(buckets: dict[str, tuple[float, float]], ip: str, rate: float, now: float) -> bool:
    """Take one token from ``ip``'s bucket (``rate``/s, burst = rate); False if empty.
    A full table (``MAX_TRACKED_IPS``) is dropped: buckets reset, the safe direction."""
    allowance, stamp = buckets.get(ip, (rate, now))
    allowance = min(rate, allowance + (now - stamp) * rate)
    if len(buckets) >= MAX_TRACKED_IPS and ip not in buckets:
        buckets.clear()
    if allowance < 1.0:
        buckets[ip] = (allowance, now)
        return False
    buckets[ip] = (allowance - 1.0, now)
    return True


def _wait(buckets: dict[str, tuple[float, float]], ip: str, rate: float, now: float
          ) -> float:
    """Seconds until ``ip``'s bucket holds one token again (0 if it does now)."""
    allowance, stamp = buckets.get(ip, (rate, now))
    allowance = min(rate, allowance + (now - stamp) * rate)
    return max(0.0, (1.0 - allowance) / rate) if rate > 0 else 0.0
