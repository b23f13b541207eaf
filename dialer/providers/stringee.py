"""Stringee ICC: route a queue's calls to the agents who own the lead, and sync the queue.

* The queue's ``get_list_agents_url`` points at our hook. Stringee POSTs
  ``{"queueId", "calls": [{"callId", "from", "to"}], "projectId"}``; we answer, for each
  call, the agents who own the caller's lead, in the ``version: 2`` shape::

      {"version": 2, "calls": [{"callId": "...", "agents": [
          {"stringee_user_id": "...", "phone_number": "...", "routing_type": 1, "answer_timeout": 15}]}]}

  The lead is the most recent live call for the number (else the most recent call) of
  the targets the queue serves; its ``agents`` (empty: the target's agents) are mapped
  to Stringee identities through ``[stringee.agents]``. A caller with no lead gets every
  agent of the queue.
* ``dialer stringee sync-queue`` creates (``POST /v1/queue``) or updates
  (``PUT /v1/queue/{id}``) the queue from ``[stringee]``, authenticated by an HS256 JWT in
  ``X-STRINGEE-AUTH``. An answer with ``r != 0`` is an error carrying its message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import orjson
import phonenumbers

from dialer.clock import Clock, SystemClock
from dialer.config import Settings
from dialer.lifecycle.states import INTAKE_OUTCOMES, TERMINAL, sql_list
from dialer.store.queries import Q

RequestObserver = Callable[[str, str, int | None, float], None]

MAX_CALLS = 500


class StringeeError(Exception):
    def __init__(self, message: str, status: int | None = None, r: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.r = r


class BadRequest(ValueError):
    pass


# -- JWT ------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rest_token(key_sid: str, key_secret: str, now: float | None = None, ttl_s: int = 3600) -> str:
    """A Stringee REST API token: HS256 JWT signed with the API key secret."""
    iat = int(time.time() if now is None else now)
    header = {"typ": "JWT", "alg": "HS256", "cty": "stringee-api;v=1"}
    payload = {"jti": f"{key_sid}-{iat}", "iss": key_sid, "exp": iat + ttl_s, "rest_api": True}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}"
    sig = hmac.new(key_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def decode_token(token: str, key_secret: str) -> dict[str, Any] | None:
    """The payload of a genuine HS256 token (signature only; the caller checks claims)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            return None
        expected = hmac.new(key_secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(expected), parts[2]):
            return None
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


# -- REST client ----------------------------------------------------------------------------------
class StringeeClient:
    def __init__(
        self,
        api_base: str,
        key_sid: str,
        key_secret: str,
        *,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: RequestObserver | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.key_sid = key_sid
        self._key_secret = key_secret
        self.now = now
        self.on_request = on_request
        self._client = httpx.AsyncClient(
            base_url=api_base.rstrip("/"),
            headers={"accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, endpoint: str, path: str, *, body: dict[str, Any] | None = None,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"X-STRINGEE-AUTH": rest_token(self.key_sid, self._key_secret, self.now())}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = orjson.dumps(body)
        start = time.perf_counter()
        status: int | None = None
        try:
            resp = await self._client.request(method, path, headers=headers, content=content, params=params)
            status = resp.status_code
        except httpx.HTTPError as e:
            raise StringeeError(f"Stringee {endpoint}: {type(e).__name__}: {e}") from None
        finally:
            if self.on_request:
                self.on_request("stringee", endpoint, status, time.perf_counter() - start)
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        r = answer.get("r") if isinstance(answer, dict) else None
        message = str(answer.get("message") or "") if isinstance(answer, dict) else resp.text[:300]
        if not 200 <= resp.status_code < 300:
            raise StringeeError(f"Stringee {endpoint}: HTTP {status}: {message or 'no message'}", status,
                                r if isinstance(r, int) else None)
        if not isinstance(answer, dict):
            raise StringeeError(f"Stringee {endpoint}: answer is not a JSON object", status)
        if r != 0:
            raise StringeeError(f"Stringee {endpoint}: r={r}: {message or 'no message'}", status,
                                r if isinstance(r, int) else None)
        return answer

    async def list_queues(self, page: int = 1, limit: int = 50) -> dict[str, Any]:
        answer = await self._call("GET", "queue_list", "/v1/queue", params={"page": page, "limit": limit})
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    async def find_queue(self, name: str, limit: int = 50) -> str | None:
        page = 1
        while page <= 1000:
            data = await self.list_queues(page, limit)
            queues = data.get("queues") or []
            for q in queues:
                if isinstance(q, dict) and q.get("name") == name and q.get("id"):
                    return str(q["id"])
            try:
                pages = int(data.get("totalPages") or 0)
            except (TypeError, ValueError):
                pages = 0
            if not queues or page >= pages:
                return None
            page += 1
        return None

    async def create_queue(self, body: dict[str, Any]) -> str:
        answer = await self._call("POST", "queue_create", "/v1/queue", body=body)
        qid = answer.get("queueID")
        if not qid:
            raise StringeeError("Stringee queue_create: the answer has no queueID")
        return str(qid)

    async def update_queue(self, queue_id: str, body: dict[str, Any]) -> None:
        await self._call("PUT", "queue_update", f"/v1/queue/{queue_id}", body=body)


def queue_body(settings: Settings, hook_url: str) -> dict[str, Any]:
    q = settings.stringee.queue
    body: dict[str, Any] = {k: v for k, v in q.model_dump().items() if v is not None}
    body["get_list_agents_url"] = hook_url
    return body


async def sync_queue(settings: Settings, client: StringeeClient, hook_url: str) -> tuple[str, str]:
    """Create or update the queue; returns ("created" | "updated", queue id)."""
    body = queue_body(settings, hook_url)
    qid = settings.stringee.queue_id or await client.find_queue(settings.stringee.queue.name)
    if qid:
        await client.update_queue(qid, body)
        return "updated", qid
    return "created", await client.create_queue(body)


# -- get_list_agents_url ----------------------------------------------------------------------------
_DIGITS = re.compile(r"\D")


def candidates(raw: Any, regions: list[str]) -> list[str]:
    """E.164 forms a provider's number may stand for ("84986776777", "+8498...", "0098...")."""
    if not isinstance(raw, str | int) or not str(raw).strip():
        return []
    text = str(raw).strip()
    digits = _DIGITS.sub("", text)
    if text.startswith("00"):
        digits = digits[2:]
    out: list[str] = []
    if 6 <= len(digits) <= 15:
        out.append("+" + digits)
    for region in regions:
        try:
            n = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(n):
            e164 = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
            if e164 not in out:
                out.append(e164)
    return out


class StringeeRouter:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, clock: Clock | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.clock: Clock = clock or SystemClock()

    def targets(self) -> list[str]:
        known = self.settings.targets
        return [t for t in self.settings.stringee.targets if t in known] or list(known)

    def queue_agents(self) -> list[str]:
        s = self.settings
        if s.stringee.agents:
            return list(s.stringee.agents)
        seen: dict[str, None] = {}
        for t in self.targets():
            seen.update(dict.fromkeys(s.targets[t].agents))
        return list(seen)

    def agent_entry(self, username: str) -> dict[str, Any]:
        st = self.settings.stringee
        a = st.agents.get(username)
        entry: dict[str, Any] = {"stringee_user_id": (a.user_id if a and a.user_id else username)}
        if a and a.phone_number:
            entry["phone_number"] = a.phone_number
        entry["routing_type"] = a.routing_type if a and a.routing_type else st.routing_type
        entry["answer_timeout"] = a.answer_timeout if a and a.answer_timeout else st.answer_timeout
        return entry

    async def owners(self, numbers: list[str]) -> dict[str, tuple[str, list[str]]]:
        """Per number, its lead's target and agents: the agent a live agent-scheduled callback
        still belongs to (within its grace) alone, as dispatch sends it; else the lead's."""
        if not numbers:
            return {}
        targets = list(self.settings.stringee.targets)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.stringee_lead_owners, numbers, targets, INTAKE_OUTCOMES,
                                    sql_list(TERMINAL), self.clock.now())
        return {r["e164"]: (r["target"], [r["owner"]] if r["owner"] else list(r["agents"] or []))
                for r in rows}

    async def answer(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("calls"), list):
            raise BadRequest("body must be a JSON object with a calls list")
        calls = payload["calls"]
        if len(calls) > MAX_CALLS:
            raise BadRequest(f"at most {MAX_CALLS} calls per request")
        regions = sorted({self.settings.targets[t].default_region for t in self.targets()})
        per_call: list[tuple[str, list[str]]] = []
        for c in calls:
            if not isinstance(c, dict) or not c.get("callId"):
                raise BadRequest("every call needs a callId")
            nums = candidates(c.get("from"), regions) + candidates(c.get("to"), regions)
            per_call.append((str(c["callId"]), nums))
        owners = await self.owners(sorted({n for _, nums in per_call for n in nums}))
        everyone = self.queue_agents()
        out = []
        for call_id, nums in per_call:
            agents: list[str] = []
            for n in nums:
                if n in owners:
                    target, lead_agents = owners[n]
                    t = self.settings.targets.get(target)
                    agents = lead_agents or (list(t.agents) if t else [])
                    break
            agents = agents or everyone
            out.append({"callId": call_id, "agents": [self.agent_entry(a) for a in dict.fromkeys(agents)]})
        return {"version": 2, "calls": out}


async def sync_queue_command(settings: Settings, hook_url: str) -> str:
    """``dialer stringee sync-queue``: a line for the operator; DialerError on failure."""
    from dialer.errors import ConfigError, DialerError

    st = settings.stringee
    if not st.key_sid or settings.stringee_key_secret is None:
        raise ConfigError("stringee.key_sid and DIALER_STRINGEE_KEY_SECRET are both needed")
    client = StringeeClient(st.api_base, st.key_sid, settings.stringee_key_secret.get_secret_value(),
                            timeout=st.timeout_s)
    try:
        action, qid = await sync_queue(settings, client, hook_url)
    except StringeeError as e:
        raise DialerError(e.message) from None
    finally:
        await client.close()
    line = f"{action} Stringee queue {st.queue.name!r}: {qid}"
    if action == "created" and not st.queue_id:
        line += f'\nset queue_id = "{qid}" under [stringee] to pin it'
    return line
