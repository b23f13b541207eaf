"""Which agents are ready, per target: the configured source, else the static list.

A target's ``agents_source`` is ``static`` (its ``agents`` list), ``portsip`` (READY
agents of its PortSIP call queue, polled) or ``ringme`` (agent-login/agent-logout
events). When that source has not spoken for ``agents_silence_s`` (default: PortSIP
``max(30, 4 x poll_s)``; ringme ``max(60, 4 x poll_s)`` while its counters poll runs for
the target, else no limit: events only come on changes), or has never spoken, pacing
falls back to the static list: one log line when it happens, ``fallback(target)`` true
for a metric, and back again (another log line) as soon as the source speaks.

``Providers`` builds the sources from the settings and runs their polls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import anyio

from dialer.clock import Clock
from dialer.config import Settings
from dialer.dispatch.pacing import AgentSource, StaticAgents
from dialer.logs import register_secret
from dialer.providers.portsip import PortSipClient, PortSipReadiness, RequestObserver
from dialer.providers.ringme import RingmeClient, RingmeReadiness

log = logging.getLogger(__name__)

FALLBACK_NAME = "static-fallback"


class Readiness(Protocol):
    """A provider's view of who is ready, with when it last spoke (``Clock.monotonic``)."""

    def ready(self, target: str) -> set[str] | None: ...

    def last_heard(self, target: str) -> float | None: ...

    def depth(self, target: str) -> int | None: ...

    def silence_default(self, target: str) -> float | None: ...


class AgentSelector:
    """``AgentSource`` for the Dispatcher: per target, its source or the static fallback."""

    def __init__(self, settings: Settings, clock: Clock, sources: Mapping[str, Readiness],
                 static: AgentSource | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.sources = dict(sources)
        self.static: AgentSource = static or StaticAgents(settings.targets)
        self._fallback: dict[str, bool] = {}

    def silence_s(self, target: str) -> float | None:
        t = self.settings.targets[target]
        if t.agents_silence_s is not None:
            return t.agents_silence_s
        src = self.sources.get(t.agents_source)
        return src.silence_default(target) if src is not None else None

    def _decide(self, target: str) -> tuple[set[str] | None, str | None]:
        """(the source's ready set, None) when it is live, else (None, why not)."""
        kind = self.settings.targets[target].agents_source
        src = self.sources.get(kind)
        if src is None:
            return None, f"{kind} is not configured"
        heard = src.last_heard(target)
        if heard is None:
            return None, "no word from it yet"
        limit = self.silence_s(target)
        quiet = self.clock.monotonic() - heard
        if limit is not None and quiet > limit:
            return None, f"silent for {quiet:.0f} s (limit {limit:g} s)"
        ready = src.ready(target)
        if ready is None:
            return None, "it knows no agent status yet"
        return ready, None

    def _kind(self, target: str) -> str:
        t = self.settings.targets.get(target)
        return t.agents_source if t is not None else "static"

    def ready(self, target: str) -> set[str] | None:
        kind = self._kind(target)
        if kind == "static":
            return self.static.ready(target)
        ready, why = self._decide(target)
        was = self._fallback.get(target, False)
        if why is None:
            if was:
                log.info("agent source speaks again; pacing follows it",
                         extra={"target": target, "source": kind})
            self._fallback[target] = False
            return ready
        if not was:
            log.warning("agent source unavailable; pacing falls back to the static agents list",
                        extra={"target": target, "source": kind, "reason": why})
        self._fallback[target] = True
        return self.static.ready(target)

    def fallback(self, target: str) -> bool:
        """True while the target's configured source is not used (for a metric)."""
        if self._kind(target) == "static":
            return False
        return self._decide(target)[1] is not None

    def fallbacks(self) -> dict[str, bool]:
        return {name: self.fallback(name) for name in self.settings.targets}

    def source_name(self, target: str) -> str:
        kind = self._kind(target)
        if kind == "static":
            return "static"
        return FALLBACK_NAME if self.fallback(target) else kind

    def depth(self, target: str) -> int | None:
        """Callers waiting in the target's provider queue (PortSIP /waiting, ringme counters)."""
        kind = self._kind(target)
        order = [kind] + [k for k in self.sources if k != kind]
        for k in order:
            src = self.sources.get(k)
            d = src.depth(target) if src is not None else None
            if d is not None:
                return d
        return None


class Providers:
    """The provider sources built from settings: clients, readiness, selector, polls."""

    def __init__(self, settings: Settings, clock: Clock, *, state_dir: Path | None = None,
                 on_request: RequestObserver | None = None) -> None:
        self._settings = settings
        self.clock = clock
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
            self.portsip = PortSipReadiness(settings, clock, client)
        r = settings.ringme
        ringme_client = None
        if r.base_url and r.queues:
            token = settings.ringme_token.get_secret_value() if settings.ringme_token else ""
            ringme_client = RingmeClient(r.base_url, token, timeout=r.timeout_s, on_request=on_request)
        state = (state_dir or settings.state_dir) / "ringme_agents.json"
        self.ringme = RingmeReadiness(settings, clock, ringme_client, state)
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
        """Run the polls until cancelled (nothing to run: returns at once)."""
        async with anyio.create_task_group() as tg:
            if self.portsip is not None:
                tg.start_soon(_forever, "portsip poll", self.portsip.poll_once, self.settings.portsip.poll_s)
            if self.ringme.client is not None:
                tg.start_soon(_forever, "ringme poll", self.ringme.poll_once, self.settings.ringme.poll_s)

    async def aclose(self) -> None:
        if self.portsip is not None:
            await self.portsip.client.close()
        if self.ringme.client is not None:
            await self.ringme.client.close()


async def _forever(name: str, poll: Callable[[], Awaitable[object]], every_s: float) -> None:
    while True:
        try:
            await poll()
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:  # a bug in one poll must not stop the daemon: log it, poll again later
            log.exception("provider poll failed", extra={"poll": name})
        await anyio.sleep(every_s)
