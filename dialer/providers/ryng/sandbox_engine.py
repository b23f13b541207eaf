"""The Ryng sandbox's simulated call centre: agents dialing calls, and callbacks.

Calls are assigned to one agent when they are accepted (round-robin within the
request, see ``sandbox.py``); each agent works through its own calls one at a time,
biggest priority first, then oldest, and waits ``maxDispose`` after every attempt.
Callbacks are POSTed by background tasks with Ryng's retry rules.

The timeline records what a call centre's own report would show, in the vendor page's
terms: when a call was *assigned to an agent* (the connect callback's moment, the
agent is offered the call), when the attempt ended, and when the agent's
``maxDispose`` ("time allotted for disposing a call before the next call is
initiated") ran out, i.e. the agent could be offered the next call; plus when each
request was accepted and each terminal callback was answered 200. Times are seconds
on the sandbox's monotonic clock, so gaps between them are exact whatever the wall
clock does.

A real Ryng keeps dialing while its customer's daemon restarts, and delivers (and
retries) the callbacks afterwards. So what the sandbox has accepted and not finished
(calls waiting or being dialed, with each attempt's drawn outcome and planned end,
agents' wrap-ups, callbacks not yet answered 200 with the tries they have left) is a
snapshot: kept in memory across ``stop()``/``start()``, and written atomically to
``SandboxConfig.state_file`` when there is one, at once when calls are accepted and at
most every ``STATE_FLUSH_S`` otherwise, so a killed process leaves at most that much
behind. A restart reloads it: an attempt whose planned end has passed ends at once with
its outcome, the callbacks go out with their remaining retries. The moments are wall
clock there (a monotonic clock does not survive the process).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import secrets
import time
from collections import Counter, defaultdict, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

import httpx
import orjson

from dialer.providers.ryng.sandbox_config import SandboxConfig
from dialer.providers.ryng.sandbox_requests import Row, Submission

ANSWERED, NO_ANSWER, BUSY, UNREACHABLE = "ANSWERED", "NO_ANSWER", "BUSY", "UNREACHABLE"
CALLBACK = "CALLBACK"  # an answered call whose customer asked to be called back
ABANDONED = "ABANDONED"  # customer-first: the customer picked up, no agent came in time
SIGNAL_S = 1.0  # vendor seconds until a busy / unreachable signal comes back
CALLBACK_RETRY_S = 60.0  # "at 1 minute intervals"
LATE_CALLBACK_S = 300.0  # how long a "late" terminal callback is held back
MAX_DELIVERIES = {"connect": 2, "terminal": 3}  # first try + retries, from the vendor pages
RECORDING_URL = "https://recordings.ryng.invalid/sandbox/{call_id}.mp3"
STATE_FLUSH_S = 0.5  # real seconds between writes of the state file while things change
STATE_VERSION = 1
log = logging.getLogger(__name__)


def iso(dt: datetime) -> str:
    """ISO 8601 UTC with microseconds and a ``Z``: ``2026-01-05T10:00:00.123456Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Attempt:
    attempt: int
    agent: str
    start: datetime
    end: datetime | None = None
    outcome: str | None = None
    ring_s: float = 0.0
    talk_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "agent": self.agent, "startTime": iso(self.start),
                "endTime": iso(self.end) if self.end else None, "outcome": self.outcome,
                "ringTime": round(self.ring_s, 3), "talkTime": round(self.talk_s, 3)}


@dataclass(eq=False, slots=True)
class Call:
    call_id: str
    seq: int
    number: str
    priority: float | int
    custom: dict[str, str]
    agents_assigned: list[str] | None
    sub: Submission
    agent: str
    state: str = "queued"  # queued | retry_wait | dialing | connected | ended
    attempts: int = 0
    disposition: str | None = None
    created: datetime = field(default_factory=utcnow)
    history: list[Attempt] = field(default_factory=list)
    cb_tail: asyncio.Event | None = None  # first try of this call's latest callback is done
    plan: tuple[str, float] | None = None  # the attempt under way: (drawn outcome, planned end, unix s)
    due: float = 0.0  # retry_wait: when it may be dialed again (unix s)

    def target(self) -> dict[str, Any]:
        return {self.sub.target_key: self.sub.target_id}

    def as_dict(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        return {"callId": self.call_id, "number": self.number, "priority": self.priority, **self.target(),
                "state": self.state, "agent": self.agent, "attempts": self.attempts,
                "disposition": self.disposition, "agentsAssigned": self.agents_assigned,
                "createdAt": iso(self.created),
                "startTime": iso(last.start) if last else None,
                "endTime": iso(last.end) if last and last.end else None,
                "history": [a.as_dict() for a in self.history], **self.custom}


@dataclass(eq=False, slots=True)
class Agent:
    name: str
    agent_id: int
    ready: list[tuple[float, int, Call]] = field(default_factory=list)  # (-priority, seq, call)
    retry: list[tuple[float, int, Call]] = field(default_factory=list)  # (due monotonic, seq, call)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "idle"  # idle | on_call | wrap_up
    current: Call | None = None
    ready_at: float | None = None
    handled: int = 0
    task: asyncio.Task[None] | None = None
    resume: Call | None = None  # reloaded: the attempt it was on, to be ended first
    hold_until: float = 0.0  # reloaded: the wrap-up it was in ends then (unix s)


@dataclass(eq=False, slots=True)
class Delivery:
    """A callback not yet answered 200 nor given up, as the state file keeps it."""

    call_id: str
    kind: str
    url: str
    body: dict[str, Any]
    tries: int  # tries left
    at: float = 0.0  # the next try is not before this (unix s)


class Engine:
    def __init__(self, config: SandboxConfig, rng: Random) -> None:
        self.cfg = config
        self.rng = rng
        self.agents = {name: Agent(name, 10 * (i + 1)) for i, name in enumerate(config.agents)}
        self.agent_ids = {str(a.agent_id): a.name for a in self.agents.values()}
        self.calls: dict[str, Call] = {}
        self.campaign_rows: dict[int, list[Row]] = {}
        self._ended: deque[str] = deque()
        self._seq = itertools.count(1)
        self._tag = secrets.token_hex(3)
        self._last_campaign = 0
        self.states: Counter[str] = Counter()
        self.dispositions: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.dials: Counter[str] = Counter()
        self.refs: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.submitted: Counter[str] = Counter()
        self.cb: dict[str, Counter[str]] = {"connect": Counter(), "terminal": Counter()}
        self.cb_status: dict[str, Counter[str]] = {"connect": Counter(), "terminal": Counter()}
        self._tasks: set[asyncio.Task[Any]] = set()
        # (monotonic s, event, agent, call id / detail): offered | ended | ready | request | terminal
        self.timeline: deque[tuple[float, str, str, str]] = deque(maxlen=max(1, config.keep_timeline))
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self.running = False
        self.wall = time.time  # unix seconds, for what outlives the process (injectable)
        self._path = Path(config.state_file) if config.state_file else None
        self._outbox: dict[int, Delivery] = {}  # in emission order
        self._outbox_ids = itertools.count(1)
        self._snapshot: dict[str, Any] | None = None  # stop() -> start() without a state file
        self._dirty = asyncio.Event()
        self._saver: asyncio.Task[None] | None = None
        self.reloaded = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.running:
            return
        self.running = True
        self._client = httpx.AsyncClient(timeout=self.cfg.callback_timeout_s, follow_redirects=False,
                                         headers={"user-agent": "ryng-sandbox/1"})
        self._sem = asyncio.Semaphore(max(1, self.cfg.callback_concurrency))
        self._restore()
        for agent in self.agents.values():
            agent.wake = asyncio.Event()
            agent.wake.set()
            agent.task = asyncio.create_task(self._agent_loop(agent), name=f"ryng-sandbox-agent-{agent.name}")

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        tasks = [a.task for a in self.agents.values() if a.task] + list(self._tasks)
        if self._saver is not None:
            tasks.append(self._saver)
            self._saver = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for a in self.agents.values():
            a.task = None
        self._tasks.clear()
        # what is under way is kept, not dropped: the next start carries on with it
        self._snapshot = self._dump()
        self._save(self._snapshot)
        self._forget_outstanding()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ state across restarts
    def _dump(self) -> dict[str, Any]:
        now_m, now_w = time.monotonic(), self.wall()
        subs: dict[int, int] = {}
        sub_list: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for call in self.calls.values():
            if call.state == "ended":
                continue
            if id(call.sub) not in subs:
                subs[id(call.sub)] = len(sub_list)
                sub_list.append({f.name: getattr(call.sub, f.name) for f in fields(call.sub)
                                 if f.name != "rows"})
            calls.append({"callId": call.call_id, "seq": call.seq, "number": call.number,
                          "priority": call.priority, "custom": call.custom,
                          "agentsAssigned": call.agents_assigned, "sub": subs[id(call.sub)],
                          "agent": call.agent, "state": call.state, "attempts": call.attempts,
                          "created": iso(call.created), "history": [a.as_dict() for a in call.history],
                          "plan": list(call.plan) if call.plan else None, "due": call.due})
        agents = {a.name: now_w + (a.ready_at - now_m) for a in self.agents.values()
                  if a.ready_at is not None and a.ready_at > now_m}
        agents.update({a.name: a.hold_until for a in self.agents.values() if a.hold_until > now_w})
        outbox = [{"callId": d.call_id, "kind": d.kind, "url": d.url, "body": d.body, "tries": d.tries,
                   "at": d.at} for d in self._outbox.values()]
        return {"version": STATE_VERSION, "written": now_w, "submissions": sub_list, "calls": calls,
                "wrapUpUntil": agents, "callbacks": outbox}

    def _save(self, snapshot: dict[str, Any]) -> None:
        """Write the state file atomically (a reader sees the old or the new one, whole)."""
        if self._path is None:
            return
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(snapshot))
            os.replace(tmp, self._path)
        except OSError as e:  # the simulation goes on; a restart would miss what changed since
            log.warning("sandbox state not written", extra={"path": str(self._path), "error": str(e)})

    def _touch(self) -> None:
        if self._path is not None:
            self._dirty.set()

    async def _save_loop(self) -> None:
        # kept up to date while running: a process killed outright leaves at most
        # STATE_FLUSH_S of changes unwritten
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._save(self._dump())
            await asyncio.sleep(STATE_FLUSH_S)

    def _forget_outstanding(self) -> None:
        for call in [c for c in self.calls.values() if c.state != "ended"]:
            self.states[call.state] -= 1
            del self.calls[call.call_id]
        for a in self.agents.values():
            a.ready.clear()
            a.retry.clear()
            a.state, a.current, a.ready_at, a.resume, a.hold_until = "idle", None, None, None, 0.0
        self._outbox.clear()

    def _restore(self) -> None:
        snap = self._snapshot
        self._snapshot = None
        if self._path is not None:
            self._dirty = asyncio.Event()
            self._saver = asyncio.create_task(self._save_loop(), name="ryng-sandbox-state")
            try:
                snap = orjson.loads(self._path.read_bytes())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as e:
                log.warning("sandbox state not read", extra={"path": str(self._path), "error": repr(e)})
        if not snap or snap.get("version") != STATE_VERSION:
            return
        try:
            self._load(snap)
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a damaged file must not stop the daemon
            log.warning("sandbox state not reloaded: the calls it held are forgotten",
                        extra={"path": str(self._path), "error": repr(e)})
            self._forget_outstanding()

    def _load(self, snap: dict[str, Any]) -> None:
        now_m, now_w = time.monotonic(), self.wall()
        subs = [Submission(**s) for s in snap["submissions"]]
        calls: dict[str, Call] = {}
        for c in sorted(snap["calls"], key=lambda c: c["seq"]):
            agent = self.agents.get(c["agent"])
            if agent is None:  # an agent no longer configured: its calls go to the first one
                agent = next(iter(self.agents.values()))
            call = Call(call_id=c["callId"], seq=next(self._seq), number=c["number"], priority=c["priority"],
                        custom=c["custom"], agents_assigned=c["agentsAssigned"], sub=subs[c["sub"]],
                        agent=agent.name, state=c["state"], attempts=c["attempts"],
                        created=datetime.fromisoformat(c["created"]),
                        history=[Attempt(a["attempt"], a["agent"], datetime.fromisoformat(a["startTime"]),
                                         datetime.fromisoformat(a["endTime"]) if a["endTime"] else None,
                                         a["outcome"], a["ringTime"], a["talkTime"]) for a in c["history"]],
                        plan=(c["plan"][0], c["plan"][1]) if c["plan"] else None, due=c["due"])
            calls[call.call_id] = call
            self.calls[call.call_id] = call
            self.states[call.state] += 1
            self.reloaded += 1
            if call.state in ("dialing", "connected") and call.plan and call.history and agent.resume is None:
                agent.resume = call
            elif call.state == "retry_wait":
                heapq.heappush(agent.retry, (now_m + max(0.0, call.due - now_w), call.seq, call))
            else:  # queued, or an attempt without its plan: dialed (again)
                self._set_state(call, "queued")
                heapq.heappush(agent.ready, (-float(call.priority), call.seq, call))
        for name, until in snap["wrapUpUntil"].items():
            if name in self.agents:
                self.agents[name].hold_until = until
        tails: dict[str, asyncio.Event] = {}  # a call's callbacks still go out in order
        for d in snap["callbacks"]:
            delivery = Delivery(d["callId"], d["kind"], d["url"], d["body"], d["tries"], d["at"])
            prev = tails.get(delivery.call_id)
            tails[delivery.call_id] = self._queue_delivery(delivery, prev, late=False, duplicate=False)
        for call_id, tail in tails.items():
            if call_id in calls:
                calls[call_id].cb_tail = tail
        self._touch()

    def _queue_delivery(self, d: Delivery, prev: asyncio.Event | None, late: bool,
                        duplicate: bool) -> asyncio.Event:
        """Send ``d`` after ``prev`` (the call's previous callback) has had its first try;
        the event returned is set once ``d`` has had its own."""
        done = asyncio.Event()
        key = next(self._outbox_ids)
        self._outbox[key] = d
        self._spawn(self._deliver(key, d, prev, done, late, duplicate))
        return done

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ intake
    def new_campaign_id(self) -> int:
        self._last_campaign = max(self._last_campaign + 1, int(time.time()))
        return self._last_campaign

    def submit(self, sub: Submission) -> list[Call]:
        """Turn a validated submission into queued calls, round-robin within it."""
        names = list(self.agents)
        pool = sub.agents if sub.agent_mapping == "global" else names
        pointer = 0
        calls: list[Call] = []
        self.submitted[sub.kind] += 1
        self.timeline.append((time.monotonic(), "request", "", f"{sub.kind}:{len(sub.rows)}"))
        for row in sub.rows:
            eligible = row.agents_assigned if sub.agent_mapping == "inline" and row.agents_assigned else pool
            chosen = pool[pointer % len(pool)]
            for k in range(len(pool)):
                cand = pool[(pointer + k) % len(pool)]
                if cand in eligible:
                    chosen = cand
                    pointer = (pointer + k + 1) % len(pool)
                    break
            seq = next(self._seq)
            call = Call(call_id=f"{self._tag}-{seq:07d}", seq=seq, number=row.number, priority=row.priority,
                        custom=dict(row.custom), agents_assigned=row.agents_assigned, sub=sub, agent=chosen)
            self.calls[call.call_id] = call
            self.states["queued"] += 1
            self.submitted["rows"] += 1
            self.refs["number"][row.number] += 1
            for key, value in row.custom.items():
                self.refs[key][value] += 1
            agent = self.agents[chosen]
            heapq.heappush(agent.ready, (-float(row.priority), seq, call))
            agent.wake.set()
            calls.append(call)
        if sub.kind == "campaign" and sub.campaign_id is not None:
            self.campaign_rows[sub.campaign_id] = sub.rows
        else:
            sub.rows = []  # the calls hold the data now
        if self._path is not None and self.running:
            self._save(self._dump())  # on disk before the request is answered: accepted means kept
        return calls

    def _set_state(self, call: Call, state: str) -> None:
        self.states[call.state] -= 1
        self.states[state] += 1
        call.state = state
        self._touch()

    # ------------------------------------------------------------------ agents
    async def _sleep(self, vendor_seconds: float) -> None:
        await asyncio.sleep(max(0.0, vendor_seconds) * self.cfg.time_scale)

    async def _take(self, agent: Agent) -> Call:
        while True:
            agent.wake.clear()
            now = time.monotonic()
            while agent.retry and agent.retry[0][0] <= now:
                _, seq, call = heapq.heappop(agent.retry)
                heapq.heappush(agent.ready, (-float(call.priority), seq, call))
            if agent.ready:
                return heapq.heappop(agent.ready)[2]
            timeout = agent.retry[0][0] - now if agent.retry else None
            try:
                await asyncio.wait_for(agent.wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _agent_loop(self, agent: Agent) -> None:
        if agent.hold_until:  # reloaded in wrap-up
            agent.state = "wrap_up"
            agent.ready_at = time.monotonic() + max(0.0, agent.hold_until - self.wall())
            await asyncio.sleep(agent.ready_at - time.monotonic())
            agent.state, agent.ready_at, agent.hold_until = "idle", None, 0.0
        while True:
            if agent.resume is not None:
                call, agent.resume = agent.resume, None
                await self._resume(agent, call)
            else:
                call = await self._take(agent)
                await self._attempt(agent, call)
            dispose = call.sub.max_dispose_s * self.cfg.time_scale
            agent.state = "wrap_up"
            agent.ready_at = time.monotonic() + dispose
            await asyncio.sleep(dispose)
            agent.state = "idle"
            agent.ready_at = None
            self.timeline.append((time.monotonic(), "ready", agent.name, call.call_id))

    def _draw_outcome(self) -> str:
        c = self.cfg
        weights = [max(0.0, w) for w in (c.answer_rate, c.no_answer_rate, c.busy_rate, c.unreachable_rate)]
        if sum(weights) <= 0:
            return ANSWERED
        return self.rng.choices([ANSWERED, NO_ANSWER, BUSY, UNREACHABLE], weights)[0]

    async def _attempt(self, agent: Agent, call: Call) -> None:
        cfg, sub = self.cfg, call.sub
        campaign = sub.kind == "campaign"
        call.attempts += 1
        call.agent = agent.name
        agent.state, agent.current = "on_call", call
        self._set_state(call, "dialing")
        attempt = Attempt(call.attempts, agent.name, utcnow())
        call.history.append(attempt)
        self.timeline.append((time.monotonic(), "offered", agent.name, call.call_id))
        self.dials[call.number] += 1
        outcome = self._draw_outcome()
        self.outcomes[outcome] += 1
        if outcome == ANSWERED:
            attempt.ring_s = self.rng.uniform(*cfg.ring_s)
            attempt.talk_s = self.rng.uniform(*cfg.talk_s)
        else:
            attempt.ring_s = cfg.ring_s[1] if outcome == NO_ANSWER else SIGNAL_S
        pickup = cfg.agent_pickup_s if outcome == ANSWERED or sub.leg_direction == "agent-first" else 0.0
        planned = pickup + attempt.ring_s + (attempt.talk_s if outcome == ANSWERED else 0.0)
        call.plan = (outcome, self.wall() + planned * cfg.time_scale)
        self._touch()
        if not campaign and sub.leg_direction == "agent-first":
            # the queue page: one connect callback "each time a call is assigned to an agent";
            # the campaign page names only its three milestones (agent picks up, customer
            # picks up, call termination), and a customer-first call reaches an agent only
            # once the customer has answered (below)
            self._emit(call, "connect", self._body(call, "agent_assigned"))
        if sub.leg_direction == "agent-first":
            await self._sleep(cfg.agent_pickup_s)
            if campaign:
                self._emit(call, "connect", self._body(call, "agent_answered"))
            await self._sleep(attempt.ring_s)
            if outcome == ANSWERED and campaign:
                self._emit(call, "connect", self._body(call, "customer_answered"))
        else:
            await self._sleep(attempt.ring_s)
            if outcome == ANSWERED and self.rng.random() < cfg.abandon_rate:
                self.outcomes[outcome] -= 1
                outcome, attempt.talk_s = ABANDONED, 0.0
                self.outcomes[outcome] += 1
                call.plan = (outcome, self.wall())
                self._touch()
                if campaign:
                    self._emit(call, "connect", self._body(call, "customer_answered"))
            if outcome == ANSWERED:
                if campaign:
                    self._emit(call, "connect", self._body(call, "customer_answered"))
                else:  # the answered customer is put through to the agent
                    self._emit(call, "connect", self._body(call, "agent_assigned"))
                await self._sleep(cfg.agent_pickup_s)
                if campaign:
                    self._emit(call, "connect", self._body(call, "agent_answered"))
        if outcome == ANSWERED:
            self._set_state(call, "connected")
            await self._sleep(attempt.talk_s)
        self._conclude(agent, call, attempt, outcome)

    async def _resume(self, agent: Agent, call: Call) -> None:
        """A reloaded attempt: it ends when it was planned to (at once if that has passed).
        The connect callbacks it had not reached yet are not sent."""
        assert call.plan is not None
        outcome, end = call.plan
        agent.state, agent.current = "on_call", call
        attempt = call.history[-1]
        await asyncio.sleep(max(0.0, end - self.wall()))
        self._conclude(agent, call, attempt, outcome)

    def _conclude(self, agent: Agent, call: Call, attempt: Attempt, outcome: str) -> None:
        sub = call.sub
        call.plan = None
        attempt.end, attempt.outcome = utcnow(), outcome
        self.timeline.append((time.monotonic(), "ended", agent.name, call.call_id))
        agent.handled += 1
        agent.current = None
        if outcome in (ANSWERED, ABANDONED) or call.attempts > sub.max_retries:
            self._finish(call, attempt)
        else:
            wait = sub.retry_interval_min * 60.0 * self.cfg.time_scale
            call.due = self.wall() + wait
            self._set_state(call, "retry_wait")
            heapq.heappush(agent.retry, (time.monotonic() + wait, call.seq, call))

    def _finish(self, call: Call, attempt: Attempt) -> None:
        assert attempt.outcome is not None
        call.disposition = attempt.outcome
        self._set_state(call, "ended")
        self.dispositions[attempt.outcome] += 1
        body = self._body(call, "terminated")
        body.update(disposition=attempt.outcome, startTime=iso(attempt.start),
                    endTime=iso(attempt.end or utcnow()), talkTime=round(attempt.talk_s))
        if attempt.outcome == ANSWERED:
            body["recordingUrl"] = RECORDING_URL.format(call_id=call.call_id)
            # drawn only when asked for: seeded runs without callbacks keep their sequence
            if self.cfg.callback_rate > 0 and self.rng.random() < self.cfg.callback_rate:
                at = utcnow() + timedelta(seconds=self.cfg.callback_after_s * self.cfg.time_scale)
                body.update(disposition=CALLBACK, callbackAt=iso(at))
        if call.sub.kind == "campaign" and self.cfg.campaign_connect_termination:
            self._emit(call, "connect", dict(body))  # the campaign page's "call termination" milestone
        self._emit(call, "terminal", body)
        self._ended.append(call.call_id)
        while len(self._ended) > max(0, self.cfg.keep_ended_calls):
            self.calls.pop(self._ended.popleft(), None)

    def _body(self, call: Call, event: str) -> dict[str, Any]:
        body: dict[str, Any] = {"event": event, "callId": call.call_id, "number": call.number,
                                "agent": call.agent, "attempts": call.attempts, "priority": call.priority,
                                **call.target()}
        if call.sub.kind == "campaign":
            body["campaignName"] = call.sub.name
        body["timestamp"] = iso(utcnow())
        body.update(call.custom)
        return body

    # ------------------------------------------------------------------ callbacks
    def _emit(self, call: Call, kind: str, body: dict[str, Any]) -> None:
        url = call.sub.connect_url if kind == "connect" else call.sub.terminal_url
        if not url:
            self.cb[kind]["no_url"] += 1
            return
        if not self.running:
            return
        late = kind == "terminal" and self.rng.random() < self.cfg.late_callback_rate
        duplicate = self.rng.random() < self.cfg.duplicate_callback_rate
        d = Delivery(call.call_id, kind, url, body, MAX_DELIVERIES[kind])
        call.cb_tail = self._queue_delivery(d, call.cb_tail, late, duplicate)
        self._touch()

    async def _deliver(self, key: int, d: Delivery, prev: asyncio.Event | None, done: asyncio.Event,
                       late: bool, duplicate: bool) -> None:
        kind, url, body = d.kind, d.url, d.body
        stats = self.cb[kind]
        retrying = False  # counted in stats["retrying"] from its first failure until it ends
        finished = False
        try:
            if prev is not None:
                await prev.wait()
            if late:
                stats["late"] += 1
                done.set()
                d.at = self.wall() + LATE_CALLBACK_S * self.cfg.time_scale
                self._touch()
            if d.at > self.wall():  # held back, or a retry's interval carried over a restart
                await asyncio.sleep(d.at - self.wall())
            payload = orjson.dumps(body)
            while d.tries > 0:
                if d.tries < MAX_DELIVERIES[kind]:
                    stats["retried"] += 1
                ok = await self._post(kind, url, payload)
                d.tries -= 1
                done.set()
                if ok and kind == "terminal":
                    self.timeline.append((time.monotonic(), "terminal", str(body.get("agent", "")),
                                          str(body.get("callId", ""))))
                if ok:
                    finished = True
                    if duplicate:
                        stats["duplicates"] += 1
                        await self._post(kind, url, payload)
                    return
                if not retrying:
                    retrying = True
                    stats["retrying"] += 1
                if d.tries > 0:
                    d.at = self.wall() + CALLBACK_RETRY_S * self.cfg.time_scale
                    self._touch()
                    await self._sleep(CALLBACK_RETRY_S)
            stats["given_up"] += 1
            finished = True
        finally:
            if retrying:
                stats["retrying"] -= 1
            if finished:  # a delivery cancelled by stop() stays in the outbox for the next start
                self._outbox.pop(key, None)
                self._touch()
            done.set()

    async def _post(self, kind: str, url: str, payload: bytes) -> bool:
        assert self._client is not None and self._sem is not None
        self.cb[kind]["sent"] += 1
        try:
            async with self._sem:
                resp = await self._client.post(url, content=payload,
                                               headers={"content-type": "application/json"})
        except httpx.HTTPError as e:
            self.cb[kind]["failed"] += 1
            self.cb_status[kind][type(e).__name__] += 1
            return False
        self.cb_status[kind][str(resp.status_code)] += 1
        if resp.status_code == 200:  # the pages: "any non-200 response" is retried
            self.cb[kind]["delivered"] += 1
            return True
        self.cb[kind]["failed"] += 1
        return False

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        s = self.states
        agents: dict[str, Any] = {}
        now = time.monotonic()
        for a in self.agents.values():
            agents[a.name] = {
                "id": a.agent_id, "state": a.state,
                "callId": a.current.call_id if a.current else None,
                "readyInS": round(max(0.0, a.ready_at - now), 3) if a.ready_at is not None else None,
                "attemptsHandled": a.handled, "waiting": len(a.ready), "retryWaiting": len(a.retry),
            }
        callbacks = {k: {**{n: 0 for n in ("sent", "delivered", "failed", "retried", "given_up", "retrying",
                                           "duplicates", "late", "no_url")},
                         **dict(v), "statuses": dict(self.cb_status[k])} for k, v in self.cb.items()}
        return {
            "calls": {"total": self.submitted["rows"] + self.reloaded, "reloaded": self.reloaded,
                      "queued": s["queued"] + s["retry_wait"],
                      "waiting": s["queued"], "retry_wait": s["retry_wait"],
                      "active": s["dialing"] + s["connected"], "dialing": s["dialing"],
                      "connected": s["connected"], "ended": s["ended"],
                      "dispositions": dict(self.dispositions)},
            "submissions": {"queue": self.submitted["queue"], "campaign": self.submitted["campaign"]},
            "dial_attempts": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes),
            "callbacks": callbacks,
            "agents": agents,
        }
