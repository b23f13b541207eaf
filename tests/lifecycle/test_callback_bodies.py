"""Callback bodies PostgreSQL would refuse are stored anyway, bodies that cannot be read
are kept as bytes, the reference is read from the target's ``ref_field`` before any
other ``customField*``, and a number without one is read as intake read the lead's."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson

from dialer.clock import SystemClock
from dialer.config import Settings
from dialer.dispatch.chunker import call_ref
from dialer.lifecycle.payload import storable
from dialer.lifecycle.service import SpoolOnly
from dialer.lifecycle.spool import QUARANTINE, Spool
from tests.lifecycle.seeded import ended, endpoint, queued_calls, service, spooled, states

FORM = "application/x-www-form-urlencoded"


def nul_form(call_id: int) -> bytes:
    return (f"event=terminated&disposition=ANSWERED&agent=al%00ice&customField10={call_ref(call_id)}"
            "&note=x%00y").encode()


async def test_a_nul_in_a_callback_is_stored_on_the_database_path(pool: asyncpg.Pool, settings: Settings,
                                                                  tmp_path: Path) -> None:
    a, b = await queued_calls(pool, 2)
    svc = service(pool, settings, tmp_path / "spool")
    async with endpoint(svc, settings) as ep:
        r1 = await ep.post(nul_form(a), FORM)
        r2 = await ep.post(ended(b, **{"x\u0000": "\u0000"}))  # JSON: in a key and in a value
    assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
    assert ep.answered == ["stored", "stored"]
    assert await states(pool) == {a: "answered", b: "answered"}
    async with pool.acquire() as conn:
        agent = await conn.fetchval("SELECT agent FROM calls WHERE id = $1", a)
        bodies = [r["payload"]["body"] for r in await conn.fetch("SELECT payload FROM call_events ORDER BY id")]
    assert agent == "al\ufffdice"
    assert bodies[0]["note"] == "x\ufffdy" and bodies[1]["x\ufffd"] == "\ufffd"
    svc.spool.close()


async def test_an_attempts_count_past_any_number_is_no_count(pool: asyncpg.Pool, settings: Settings,
                                                             tmp_path: Path) -> None:
    """int(float("inf")) raised OverflowError: a 500, and Ryng resent it for nothing."""
    a, b = await queued_calls(pool, 2)
    svc = service(pool, settings, tmp_path / "spool")
    async with endpoint(svc, settings) as ep:
        r1 = await ep.post(ended(a, attempts="inf"))
        r2 = await ep.post(urlencode({"event": "terminated", "disposition": "ANSWERED", "agent": "alice",
                                      "customField10": call_ref(b), "attempts": "1e400"}).encode(), FORM)
    assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
    assert await states(pool) == {a: "answered", b: "answered"}
    svc.spool.close()


async def test_a_nul_in_a_spooled_callback_is_stored_at_replay(pool: asyncpg.Pool, settings: Settings,
                                                               tmp_path: Path) -> None:
    (a,) = await queued_calls(pool, 1)
    svc = service(pool, settings, tmp_path / "spool")
    await svc.spool.append(spooled(nul_form(a), FORM))  # spooled raw, as received
    assert await svc.replay_once() == 1
    assert await states(pool) == {a: "answered"}
    assert not (tmp_path / "spool" / QUARANTINE).exists()
    svc.spool.close()


def test_nul_and_lone_surrogates_become_replacement_characters() -> None:
    assert storable("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    assert storable("\ud83d\ude00") == "\U0001f600"  # a surrogate pair is one character
    assert storable("plain") == "plain"


async def test_the_reference_in_ref_field_wins_over_other_custom_fields(pool: asyncpg.Pool, settings: Settings,
                                                                       tmp_path: Path) -> None:
    """A CRM field (customField1) that happens to hold another call's reference of the
    same chunk must not move that call: customField10 is the target's ref_field."""
    a, b, c = await queued_calls(pool, 3)
    svc = service(pool, settings, tmp_path / "spool")
    assert settings.targets["sales"].ref_field == 10
    body = orjson.dumps({"event": "terminated", "disposition": "ANSWERED",
                         "customField1": call_ref(b), "customField10": call_ref(a)})
    assert await svc.receive(1, "terminal", body, "application/json") == "stored"
    assert await states(pool) == {a: "answered", b: "queued", c: "queued"}
    # with no reference in ref_field, another customField's is still a fallback
    body = orjson.dumps({"event": "terminated", "disposition": "BUSY", "customField3": call_ref(c)})
    assert await svc.receive(1, "terminal", body, "application/json") == "stored"
    assert await states(pool) == {a: "answered", b: "queued", c: "busy"}
    svc.spool.close()


async def test_a_national_number_matches_in_its_chunks_target_region(pool: asyncpg.Pool, make_settings: Any,
                                                                     tmp_path: Path) -> None:
    """SPEC §6 falls back to the chunk token plus ``number``: a number sent as the lead was
    written (no country code) matches in the default_region of the chunk's target."""
    settings = make_settings(targets={"sales": {"queue_id": "42", "default_region": "US"},
                                      "uk": {"queue_id": "43", "default_region": "GB"}})
    (us,) = await queued_calls(pool, 1, chunk_id=1)
    (gb,) = await queued_calls(pool, 1, chunk_id=2)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE calls SET e164 = '+14155550107' WHERE id = $1", us)
        await conn.execute("UPDATE calls SET e164 = '+442079460018', target = 'uk' WHERE id = $1", gb)
        await conn.execute("UPDATE chunks SET target = 'uk' WHERE id = 2")
    svc = service(pool, settings, tmp_path / "spool")
    for chunk, number in ((1, "4155550107"), (2, "020 7946 0018")):
        body = orjson.dumps({"event": "terminated", "disposition": "ANSWERED", "number": number})
        assert await svc.receive(chunk, "terminal", body, "application/json") == "stored"
    assert await states(pool) == {us: "answered", gb: "answered"}
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_events WHERE call_id IS NULL") == 0  # none unmatched
    svc.spool.close()


def test_event_values_read_in_any_spelling() -> None:
    """SPEC §6 reads the callback "case-insensitively in camelCase or snake_case"."""
    from dialer.config import load_settings
    from dialer.lifecycle import events, payload
    from dialer.lifecycle.dispositions import Dispositions
    from dialer.lifecycle.states import State

    s = load_settings(None, environ={})
    disp = Dispositions(s.dispositions, s.compliance.dnc_dispositions)
    for word in ("customer_answered", "customerAnswered", "CustomerAnswered", "CUSTOMER-ANSWERED"):
        cb = payload.read({"event": word, "customField10": "dl1"})
        assert cb.event == "customeranswered"  # read as the keys are
        assert events.target_state("connect", cb, disp) == State.CONNECTED
    for word in ("agentAssigned", "agent_answered", "agentAnswered"):
        assert events.target_state("connect", payload.read({"event": word}), disp) == State.ASSIGNED


def multipart(fields: dict[str, str], boundary: str = "ryng-7c1f") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body as ``curl -F`` sends one, and its content type."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return "".join(parts).encode() + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_a_multipart_callback_moves_its_call_like_a_form_encoded_one(pool: asyncpg.Pool, settings: Settings,
                                                                          tmp_path: Path) -> None:
    """Ryng's API pages send form-data as multipart: a callback may come that way too."""
    a, b = await queued_calls(pool, 2)
    svc = service(pool, settings, tmp_path / "spool")
    fields = {"event": "terminated", "disposition": "BUSY", "agent": "bob"}
    async with endpoint(svc, settings) as ep:
        r1 = await ep.post(urlencode({**fields, "customField10": call_ref(a)}).encode(), FORM)
        r2 = await ep.post(*multipart({**fields, "customField10": call_ref(b), "note": "é"}))
    assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
    assert ep.answered == ["stored", "stored"]
    assert await states(pool) == {a: "busy", b: "busy"}
    async with pool.acquire() as conn:
        body = await conn.fetchval("SELECT payload->'body' FROM call_events WHERE call_id = $1", b)
    assert body == {**fields, "customField10": call_ref(b), "note": "é"}
    svc.spool.close()


UNREADABLE = [  # (body, content type): signed callbacks no reading can make sense of
    (b'{"event": "terminated", "disposition": "ANSW', "application/json"),  # cut short
    (b'[{"event": "terminated"}]', "application/json"),  # not an object
    (b"\x89PNG\r\n\x1a\n\x00\xff", "application/octet-stream"),
    (b"event=terminated&agent=\xff", FORM),  # not UTF-8
    (multipart({"event": "terminated"})[0][:-8], multipart({})[1]),  # no closing boundary
    # JSON orjson reads (up to 1,024 levels) but nested past Python's recursion limit, or
    # past the 255 levels the audit row's jsonb can be written with
    (b'{"event": "terminated", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", "application/json"),
    (b'{"event": "terminated", "x": ' + b"[" * 300 + b"]" * 300 + b"}", "application/json"),
]


async def unreadable_events(pool: asyncpg.Pool) -> list[tuple[bytes, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT kind, call_id, applied, from_state, to_state, payload FROM call_events "
                                "WHERE payload ? 'body_base64' ORDER BY id")
    assert all(r["kind"] == "callback_terminal" and r["call_id"] is None and r["applied"] is False
               and r["from_state"] is None and r["to_state"] is None for r in rows)
    assert all(r["payload"]["chunk_id"] == 1 and r["payload"]["error"] for r in rows)
    return [(base64.b64decode(r["payload"]["body_base64"]), r["payload"]["content_type"]) for r in rows]


async def test_an_unreadable_body_is_recorded_as_bytes_and_acknowledged(pool: asyncpg.Pool, settings: Settings,
                                                                        tmp_path: Path) -> None:
    """Ryng resends anything not answered 200, and a resent body reads no better: it is
    kept as received (the audit table has every callback), counted, and answered 200."""
    (a,) = await queued_calls(pool, 1)
    svc = service(pool, settings, tmp_path / "spool")
    async with endpoint(svc, settings) as ep:
        answers = [await ep.post(body, ctype) for body, ctype in UNREADABLE]
    assert [r.status_code for r in answers] == [200] * len(UNREADABLE), [r.text for r in answers]
    assert ep.answered == ["bad_payload"] * len(UNREADABLE)  # dialer_callbacks_total{result=...}
    assert await unreadable_events(pool) == UNREADABLE
    assert await states(pool) == {a: "queued"}
    assert svc.spool.depth == 0
    svc.spool.close()


async def test_an_unreadable_body_spooled_is_recorded_at_replay_not_quarantined(
        pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    """While anything is spooled (the database was away) a callback is spooled as received,
    whatever its body; the replayer records an unreadable one in its turn and goes on."""
    a, b = await queued_calls(pool, 2)
    svc = service(pool, settings, tmp_path / "spool")
    await svc.spool.append(spooled(ended(a)))
    for body, ctype in UNREADABLE:
        assert await svc.receive(1, "terminal", body, ctype) == "bad_payload"
    assert await svc.receive(1, "terminal", ended(b), "application/json") == "spooled"
    assert svc.spool.depth == len(UNREADABLE) + 2
    assert await svc.replay_once() == len(UNREADABLE) + 2
    assert await states(pool) == {a: "answered", b: "answered"}
    assert await unreadable_events(pool) == UNREADABLE
    assert not (tmp_path / "spool" / QUARANTINE).exists()
    svc.spool.close()


async def test_an_unreadable_body_at_start_up_is_spooled_and_recorded_at_replay(
        pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    """Before the database is there (SpoolOnly), it is spooled like any other callback."""
    early = SpoolOnly(Spool(tmp_path / "spool"), SystemClock(), {10})
    body, ctype = UNREADABLE[0]
    assert await early.receive(1, "terminal", body, ctype) == "bad_payload"
    early.spool.close()
    svc = service(pool, settings, tmp_path / "spool")
    assert await svc.replay_once() == 1
    assert await unreadable_events(pool) == [(body, ctype)]
    svc.spool.close()
