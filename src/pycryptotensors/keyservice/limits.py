"""Limits that keep one client, or one address, from wearing the service down: token buckets for failures.

Every refused request (4xx) spends one token from its source address's bucket and, when it carried a bearer
token, from that token's bucket. A request whose token has an empty bucket is answered 429 before anything
else is done; one whose source address has an empty bucket too, unless it carries a valid client or admin
token (so that a flood from a shared address does not lock out the users behind it). Buckets refill at
``rate`` per minute up to ``rate`` (a burst of ``rate`` failures is tolerated). In memory and per process:
several replicas each count on their own. Behind a load balancer the source is the balancer's address
(X-Forwarded-For is not trusted).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_KEYS = 100_000  # beyond this many tracked sources, full buckets are forgotten first


@dataclass
class FailureLimiter:
    rate: float  # failures per minute and burst size; 0 turns limiting off
    clock: Callable[[], float] = field(default=time.monotonic)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, last update)

    @staticmethod
    def keys(source: str | None, token: str | None) -> list[str]:
        keys = [f"source:{source}"]
        if token:  # the bucket is named by a hash: the limiter never holds a usable credential
            keys.append("token:" + hashlib.sha256(token.encode()).hexdigest()[:32])
        return keys

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.rate, now))
        return min(self.rate, tokens + (now - last) * self.rate / 60.0)

    def allowed(self, keys: list[str]) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        return all(self._level(key, now) >= 1.0 for key in keys)

    def failed(self, keys: list[str]) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        for key in keys:
            self._buckets[key] = (max(0.0, self._level(key, now) - 1.0), now)
        if len(self._buckets) > MAX_KEYS:
            self._buckets = {k: v for k, v in self._buckets.items() if self._level(k, now) < self.rate}

    def retry_after(self) -> int:
        return max(1, round(60.0 / self.rate)) if self.rate > 0 else 0
