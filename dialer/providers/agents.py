"""Which agents are ready, per target: the configured source, else the static list.

A target's ``agents_source`` is ``auto`` (the best source configured for it: ringme, then
PortSIP, then its ``agents`` list), ``static`` (its ``agents`` list), ``portsip`` (READY
agents of its PortSIP call queue, polled) or ``ringme`` (agent-login/agent-logout
events). When a source has not spoken for ``agents_silence_s`` (default: PortSIP
``max(30, 4 x poll_s)``; ringme ``max(60, 4 x poll_s)`` while its counters poll runs for
the target, else no limit: events only come on changes), or has never spoken, pacing
falls back to the static list: one log line when it happens, ``fallback(target)`` true
for a metric, and back again (another log line) as soon as the source speaks.

What the sources say lives in PostgreSQL (``agent_state``) and is read on the pacing
transaction's connection, so every instance behind a load balancer paces on the same
ready agents. ``Providers`` builds the sources from the settings and runs their polls,
each once per interval across instances.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import anyio
import asyncpg

from dialer.clock import Clock
from dialer.config import Settings
from dialer.dispatch.pacing import AgentSource, Ready, StaticAgents
from dialer.logs import register_secret
from dialer.providers import agent_state
from dialer.providers.agent_state import SourceView
from dialer.providers.portsip import PortSipClient, PortSipReadiness, RequestObserver
from dialer.providers.ringme import RingmeClient, RingmeReadiness

log = logging.getLogger(__name__)

FALLBACK_NAME = "static-fallback"


class Readiness(Protocol):
    """A provider's view of a target, read from the shared tables on the caller's connection."""

    async def view(self, conn: asyncpg.Connection, target: str) -> SourceView: ...

    def silence_default(self, target: str) -> float | None: ...


class AgentSelector:
    """``AgentSource`` for the Dispatcher: per target, its source or the static fallback."""

    def __init__(self, settings: Settings, clock: Clock, sources: Mapping[str, Readiness],
                 static: AgentSource | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.sources = dict(sources)
        self.static: AgentSource = static or StaticAgents(settings.targets)
        self._using: dict[str, str] = {}  # target -> the source its pacing last followed

    def silence_s(self, target: str, kind: str | None = None) -> float | None:
        t = self.settings.targets[target]
        if t.agents_silence_s is not None:
            return t.agents_silence_s
        src = self.sources.get(kind or self._kind(target))
        return src.silence_default(target) if src is not None else None

    def _decide(self, target: str, kind: str, view: SourceView | None) -> tuple[set[str] | None, str | None]:
        """(the source's ready set, None) when it is live, else (None, why not)."""
        if view is None:
            return None, f"{kind} is not configured"
        if view.heard_at is None:
            return None, "no word from it yet"
        limit = self.silence_s(target, kind)
        quiet = (self.clock.now() - view.heard_at).total_seconds()
        if limit is not None and quiet > limit:
            return None, f"silent for {quiet:.0f} s (limit {limit:g} s)"
        if view.ready is None:
            return None, "it knows no agent status yet"
        return view.ready, None

    def chain(self, target: str) -> list[str]:
        """The sources a target's pacing follows, best first; the agents list after them.

        ``agents_source = "auto"`` (the default) is SPEC §5's "best source configured":
        agent events (ringme: it polls the target's queue, or maps some of its agents), then
        agent status polling (PortSIP: ``[portsip.queues.<target>]``). A named source is
        followed alone; ``static`` is the list alone."""
        t = self.settings.targets.get(target)
        if t is None or t.agents_source == "static":
            return []
        if t.agents_source != "auto":
            return [t.agents_source]
        found = []
        r = self.settings.ringme
        # ringme's agent map is global: it speaks for a target that polls its queue, or whose
        # agents it maps (a target of other agents would read "nobody ready" from it)
        if "ringme" in self.sources and (target in r.queues or set(t.agents) & set(r.agents.values())):
            found.append("ringme")
        if "portsip" in self.sources and target in self.settings.portsip.queues:
            found.append("portsip")
        return found

    def _kind(self, target: str) -> str:
        chain = self.chain(target)
        return chain[0] if chain else "static"

    async def ready(self, conn: asyncpg.Connection, target: str) -> Ready:
        chain = self.chain(target)
        if not chain:
            return await self.static.ready(conn, target)
        why_not: list[str] = []
        was = self._using.get(target)
        for kind in chain:
            src = self.sources.get(kind)
            view = await src.view(conn, target) if src is not None else None
            ready, why = self._decide(target, kind, view)
            if why is None:
                if was == FALLBACK_NAME:
                    log.info("agent source speaks again; pacing follows it",
                             extra={"target": target, "source": kind})
                elif was is not None and was != kind:  # from one source to another in the chain
                    log.warning("agent source changed; pacing follows the next one that speaks",
                                extra={"target": target, "source": kind, "was": was,
                                       "reason": "; ".join(why_not) or "a better source speaks again"})
                self._using[target] = kind
                return Ready(ready, kind)
            why_not.append(why if len(chain) == 1 else f"{kind}: {why}")
        if was != FALLBACK_NAME:
            log.warning("agent source unavailable; pacing falls back to the static agents list",
                        extra={"target": target, "source": ", ".join(chain), "reason": "; ".join(why_not)})
        self._using[target] = FALLBACK_NAME
        return Ready((await self.static.ready(conn, target)).agents, FALLBACK_NAME)

    def fallback(self, target: str) -> bool:
        """True while no configured source is used, as last decided (a metric)."""
        return bool(self.chain(target)) and self._using.get(target, FALLBACK_NAME) == FALLBACK_NAME

    def fallbacks(self) -> dict[str, bool]:
        return {name: self.fallback(name) for name in self.settings.targets}

    async def depth(self, conn: asyncpg.Connection, target: str) -> int | None:
        """Callers waiting in the target's provider queue (PortSIP /waiting, ringme counters)."""
        kind = self._kind(target)
        order = [kind] + [k for k in self.sources if k != kind]
        for k in order:
            src = self.sources.get(k)
            d = (await src.view(conn, target)).depth if src is not None else None
            if d is not None:
                return d
        return None


class Providers:
    """The provider sources built from settings: clients, readiness, selector, polls."""

    def __init__(self, settings: Settings, clock: Clock, pool: asyncpg.Pool, *, instance_id: str = "local",
                 state_dir: Path | None = None, on_request: RequestObserver | None = None) -> None:
        self._settings = settings
        self.clock = clock
        self.pool = pool
        self.instance_id = instance_id
        for secret in (settings.portsip_token, settings.ringme_token, settings.stringee_key_secret):
            if secret is not None:
                register_secret(secret.get_secret_value())
        self.portsip: PortSipReadiness | None = None
        p = settings.portsip
        if p.base_url and p.queues:
            if settings.portsip_token is None:
                log.warning("PortSIP is configured but DIALER_PORTSIP_TOKEN is not set")
            token = settings.portsip_token.get_secret_value() if settings.portsip_token else ""
            client = PortSipClient(p.base_url, token, timeout=p.timeout_s, on_request=on_request)
            self.portsip = PortSipReadiness(settings, clock, client, pool)
        r = settings.ringme
        ringme_client = None
        if r.base_url and r.queues:
            token = settings.ringme_token.get_secret_value() if settings.ringme_token else ""
            ringme_client = RingmeClient(r.base_url, token, timeout=r.timeout_s, on_request=on_request)
        self.legacy_ringme_file = (state_dir or settings.state_dir) / "ringme_agents.json"
        self.ringme = RingmeReadiness(settings, clock, pool, ringme_client)
        sources: dict[str, Readiness] = {"ringme": self.ringme}
        if self.portsip is not None:
            sources["portsip"] = self.portsip
        self.selector = AgentSelector(settings, clock, sources)

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, new: Settings) -> None:
        """A config reload (new targets) reaches every source."""
        self._settings = new
        self.selector.settings = new
        if isinstance(self.selector.static, StaticAgents):
            self.selector.static = StaticAgents(new.targets)
        self.ringme.settings = new
        if self.portsip is not None:
            self.portsip.settings = new

    async def run(self) -> None:
        """Run the polls until cancelled, each once per interval across instances (nothing
        to poll: returns once an older version's ringme state file is imported)."""
        await self.ringme.import_file(self.legacy_ringme_file)
        async with anyio.create_task_group() as tg:
            if self.portsip is not None:
                tg.start_soon(self._turns, self.portsip.name, self.portsip.poll_once,
                              self.settings.portsip.poll_s)
            if self.ringme.client is not None:
                tg.start_soon(self._turns, self.ringme.name, self.ringme.poll_once,
                              self.settings.ringme.poll_s)

    async def _turns(self, source: str, poll: Callable[[asyncpg.Connection], Awaitable[object]],
                     every_s: float) -> None:
        while True:
            try:
                wait = await agent_state.poll_turn(self.pool, source, self.instance_id, every_s,
                                                   self.clock, poll)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception:  # a bug in one poll must not stop the daemon: log it, poll again later
                log.exception("provider poll failed", extra={"poll": source})
                wait = every_s
            await anyio.sleep(wait)

    async def aclose(self) -> None:
        if self.portsip is not None:
            await self.portsip.client.close()
        if self.ringme.client is not None:
            await self.ringme.client.close()
