"""A circuit breaker per target: repeated provider failure pauses dispatch, then probes."""

from __future__ import annotations

from dataclasses import dataclass

from dialer.clock import Clock


@dataclass
class Breaker:
    clock: Clock
    threshold: int = 5  # consecutive failed sends that open it
    base_cooldown_s: float = 15.0
    max_cooldown_s: float = 300.0
    state: str = "closed"  # closed | open | half_open
    failures: int = 0
    opened_at: float = 0.0
    cooldown_s: float = 0.0
    probing: bool = False
    opened_total: int = 0

    def allow(self) -> bool:
        """May a chunk be sent now? In half-open, exactly one probe at a time."""
        if self.state == "closed":
            return True
        if self.state == "open" and self.clock.monotonic() - self.opened_at >= self.cooldown_s:
            self.state = "half_open"
            self.probing = False
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def fillable(self) -> bool:
        """May dispatch record a chunk now? Closed, or the cool-down is over: that chunk's
        send is the probe (``allow``). Without this an open breaker with no chunk left to
        send would never be probed, and the target would stop for good."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self.clock.monotonic() - self.opened_at >= self.cooldown_s
        return not self.probing

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.cooldown_s = 0.0
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or self.failures >= self.threshold:
            if self.state != "open":
                self.opened_total += 1
            self.state = "open"
            self.opened_at = self.clock.monotonic()
            self.cooldown_s = min(
                self.max_cooldown_s,
                self.base_cooldown_s if self.cooldown_s == 0 else self.cooldown_s * 2,
            )

    def snapshot(self) -> dict[str, object]:
        remaining = 0.0
        if self.state == "open":
            remaining = max(0.0, self.cooldown_s - (self.clock.monotonic() - self.opened_at))
        return {"state": self.state, "failures": self.failures, "retry_in_s": round(remaining, 1)}
