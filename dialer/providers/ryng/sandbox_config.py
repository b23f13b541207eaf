"""The Ryng sandbox's settings: simulated call centre, fault injection, callbacks.

Its own module so the engine and the HTTP side both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SandboxConfig:
    token: str = "sandbox-token"  # noqa: S105 - expected x-access-token
    agents: list[str] = field(default_factory=lambda: ["alice", "bob", "carol"])
    time_scale: float = 1.0  # multiplies every vendor duration
    answer_rate: float = 0.6
    no_answer_rate: float = 0.2
    busy_rate: float = 0.1
    unreachable_rate: float = 0.1
    # customer-first only: the share of answered calls no agent takes in time (disposition
    # ABANDONED); 0 keeps every answered call
    abandon_rate: float = 0.0
    ring_s: tuple[float, float] = (2.0, 8.0)
    talk_s: tuple[float, float] = (20.0, 120.0)
    agent_pickup_s: float = 1.0
    default_max_dispose_s: float = 10.0
    default_leg_direction: str = "agent-first"
    default_max_retries: int = 0
    default_retry_interval_min: float = 5.0
    queues: list[str] | None = None  # known queue ids; None accepts any
    max_calls_per_request: int = 10_000
    keep_requests: int = 100_000  # the API request log (_sandbox/requests)
    # fault injection (all off by default)
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)  # what error_rate answers (nothing queued)
    throttle_rate: float = 0.0
    retry_after_s: int = 1
    timeout_rate: float = 0.0
    timeout_hang_s: float = 120.0
    latency_s: float = 0.0
    answer_delay_s: float = 0.0  # after the calls are queued, before the answer
    accept_then_fail_rate: float = 0.0
    accept_then_fail_mode: str = "mixed"  # mixed | 5xx | drop
    accept_then_fail_statuses: tuple[int, ...] = (500, 502, 504)  # what "5xx" answers after queuing
    duplicate_callback_rate: float = 0.0
    late_callback_rate: float = 0.0
    # agent-scheduled callbacks: this share of answered calls ends CALLBACK, with a
    # callbackAt this many (vendor) seconds ahead
    callback_rate: float = 0.0
    callback_after_s: float = 60.0
    # callbacks and memory
    campaign_connect_termination: bool = True
    callback_timeout_s: float = 10.0
    callback_concurrency: int = 32
    keep_ended_calls: int = 100_000
    keep_timeline: int = 200_000  # events kept for GET _sandbox/timeline
    seed: int | None = None
    # where what was accepted and not yet finished is kept across restarts (see
    # sandbox_engine); None keeps it in memory only, across stop() and start()
    state_file: str | None = None
