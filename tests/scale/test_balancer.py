"""Past one machine: three daemon instances on one PostgreSQL behind a real HAProxy,
configured from the README (its health check on ``/readyz``, its body limits).

* A ringme agent event sent through the balancer lands on one instance and changes the
  pacing limit every instance reports (GET /v1/targets on each): agent state is shared.
* The balancer's limits are the daemon's (callbacks 256 KB, API 50 MB, heads 32 KB).
* ``kill -9`` of one instance mid-run — while the sandbox holds the answer to a send whose
  calls it has already taken — with the Ryng sandbox's callbacks and our API calls going
  through the balancer: the others keep answering, take over its chunks through the
  orphan check or a callback's proof of life, nothing is dialed twice (counted at the sandbox), every batch
  finishes, and HAProxy's health check marks the dead one DOWN (read on its stats
  socket). Short variant always; a longer one (a restart that comes back UP, a second
  kill, more leads) under ``DIALER_SLOW=1``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dialer.config import load_settings
from dialer.dispatch.chunker import call_ref
from dialer.http import hooks
from tests.conftest import TOKEN, DaemonProcess, fresh_database
from tests.faults.harness import (
    INTAKE,
    SLOW,
    SandboxConfig,
    SandboxThread,
    call_states,
    instance_env,
    kill_all,
    log_errors,
    number,
    poll,
    sql,
    sql_value,
    target_toml,
    wait_all_ended,
)
from tests.scale.balancer import HAProxy, install_haproxy, readme_config, wait_status

NAMES = ("i1", "i2", "i3")


@pytest.fixture(scope="session")
def haproxy_bin() -> str:
    return install_haproxy()


@dataclass
class Cluster:
    lb: HAProxy
    daemons: dict[str, DaemonProcess] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.lb.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def instance_id(self, name: str, dsn: str) -> str:
        proc = self.daemons[name].proc
        assert proc is not None
        return str(sql_value(dsn, "SELECT id FROM instances WHERE id LIKE $1", f"%-{proc.pid}-%"))


@contextlib.contextmanager
def cluster(haproxy: str, root: Path, env: dict[str, str]) -> Iterator[Cluster]:
    """Three daemons whose public URL is the balancer's, then HAProxy in front of them."""
    lb = HAProxy(haproxy, root / "haproxy")
    c = Cluster(lb)
    base = {**env, "DIALER_INSTANCE_STALE_S": "2"}
    for name in NAMES:
        ienv, cwd = instance_env(base, root, name, DIALER_PUBLIC_URL=lb.url)
        c.daemons[name] = DaemonProcess(ienv, cwd)
    try:
        with ThreadPoolExecutor(len(NAMES)) as pool:  # start together: each takes a second or two
            list(pool.map(lambda d: d.start(), c.daemons.values()))
        lb.start({name: d.port for name, d in c.daemons.items()})
        yield c
    finally:
        lb.stop()
        for d in c.daemons.values():
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        kill_all(list(c.daemons.values()))


# -- shared agent state and limits (one cluster for the module) ---------------------------------
RINGME_TOML = """
default_target = "sales"

[targets.sales]
kind = "queue"
queue_id = "42"
agent_mapping = "global"
agents = ["alice", "bob", "carol"]
calling_hours = "00:00-24:00"
calls_per_agent = 2
agents_source = "ringme"

[ringme.agents]
"136" = "alice"
"137" = "bob"
"138" = "carol"
"""


@pytest.fixture(scope="module")
def ringme_cluster(haproxy_bin: str, pg_server: str, template_dsn: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    root = tmp_path_factory.mktemp("ringme-cluster")
    (root / "d.toml").write_text(RINGME_TOML)
    for dsn in fresh_database(pg_server):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
        env.update(DIALER_DATABASE_URL=dsn, DIALER_API_TOKENS=TOKEN, DIALER_CALLBACK_SECRET="test-callback-secret",
                   DIALER_LOG_FORMAT="json", DIALER_CONFIG=str(root / "d.toml"))
        with cluster(haproxy_bin, root, env) as c:
            yield c, dsn
            for d in c.daemons.values():
                assert not log_errors(d), "\n".join(log_errors(d)[:20])


def sales_on(d: DaemonProcess) -> dict[str, Any]:
    with d.client() as c:
        r = c.get("/v1/targets")
    assert r.status_code == 200, r.text
    sales: dict[str, Any] = next(t for t in r.json()["targets"] if t["name"] == "sales")
    return sales


def pacing(c: Cluster) -> dict[str, tuple[str, int, int]]:
    """(agents source, ready agents, limit) of the target as each instance reports it."""
    return {name: (t["agents_source"], t["ready_agents"], t["limit"])
            for name, t in ((n, sales_on(d)) for n, d in c.daemons.items())}


def test_a_ringme_event_through_the_balancer_changes_every_instances_pacing(
        ringme_cluster: tuple[Cluster, str]) -> None:
    c, _dsn = ringme_cluster
    s = load_settings(None, environ={"DIALER_PUBLIC_URL": c.lb.url,
                                     "DIALER_CALLBACK_SECRET": "test-callback-secret"})
    hook = hooks.ringme_url(s, s.secret())
    assert hook.startswith(c.lb.url + "/hooks/ringme/")  # the URL operators give ringme
    assert set(pacing(c).values()) == {("static-fallback", 3, 6)}  # no event yet: the static list

    def event(agent_id: str, status: str, method: str = "GET", **more: str) -> str:
        data = {"agent_id": agent_id, "agent_status": status, "agent_type": "local", **more}
        r = httpx.get(hook, params=data) if method == "GET" else httpx.post(hook, data=data)
        assert r.status_code == 200, r.text
        return str(r.json()["result"])

    # round robin: three events, three instances; each instance then sees all three
    assert [event("136", "available"), event("137", "available", "POST"),
            event("138", "available")] == ["changed"] * 3
    assert set(pacing(c).values()) == {("ringme", 3, 6)}

    logged_out_at = datetime.now(UTC)
    assert [event("137", "logged_out", "POST"), event("138", "logged_out")] == ["changed"] * 2
    assert set(pacing(c).values()) == {("ringme", 1, 2)}

    # a late event (it happened before the logout, it arrives after) changes nothing anywhere
    late = (logged_out_at - timedelta(seconds=30)).isoformat()
    assert event("137", "available", event_time=late) == "stale"
    assert event("137", "logged_out") == "repeat"
    assert set(pacing(c).values()) == {("ringme", 1, 2)}

    # the events really landed on different instances (each logs the changes it applied)
    landed = {name for name, d in c.daemons.items() if '"ringme agent status"' in d.log.read_text()}
    assert len(landed) >= 2, landed


def _raw(url: str, head: str) -> tuple[int, str]:
    """Send a request head (no body) and read the status line and body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and (b"</html>" in data or data.rstrip().endswith(b"}")):
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data.decode(errors="replace")


def test_the_balancer_limits_are_the_daemons(ringme_cluster: tuple[Cluster, str]) -> None:
    c, _dsn = ringme_cluster
    url = c.lb.url
    cb = "/callbacks/ryng/terminal/forged"
    # bodies: refused by HAProxy on the Content-Length alone, before any byte of them
    status, text = _raw(url, f"POST {cb} HTTP/1.1\r\nHost: x\r\nContent-Length: {256 * 1024 + 1}\r\n\r\n")
    assert status == 413 and "<html>" in text  # HAProxy's page: the daemon answers JSON
    status, _ = _raw(url, f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * 1024 * 1024 + 1}\r\n"
                          f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\r\n")
    assert status == 413
    # at the limit the request goes through: the daemon refuses the forged token itself
    r = httpx.post(url + cb, content=b"x" * (256 * 1024), headers={"content-type": "text/plain"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # heads: the daemon's 431 past 32 KB reaches the client; under it, an answer
    assert httpx.get(url + "/healthz", headers={"x-pad": "p" * (31 * 1024)}).status_code == 200
    r = httpx.get(url + "/healthz", headers={"x-pad": "p" * (33 * 1024)})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert httpx.get(url + "/healthz", headers={"x-pad": "p" * (48 * 1024)}).status_code == 400  # HAProxy


# -- kill -9 behind the balancer ---------------------------------------------------------------------
@dataclass
class Run:
    batches: int
    leads: int  # per batch
    kills: list[tuple[float, str]]  # (share of calls submitted, instance to kill)
    restart: str | None = None  # killed instance brought back (it must come back UP)
    timeout_s: float = 60


SHORT = Run(batches=3, leads=600, kills=[(0.25, "i2")])
LONG = Run(batches=6, leads=3_000, kills=[(0.2, "i2"), (0.6, "i3")], restart="i2", timeout_s=900)
RUNS = [pytest.param(SHORT, id="short")]
if SLOW:
    RUNS.append(pytest.param(LONG, id="long", marks=pytest.mark.timeout(1800)))


@pytest.mark.parametrize("run", RUNS)
def test_kill_9_behind_the_balancer(run: Run, haproxy_bin: str, daemon_env: dict[str, str], tmp_path: Path,
                                    db_url: str) -> None:
    agents = [f"a{i}" for i in range(30)]
    # the sandbox answers each send 1 s after taking its calls: the instance is killed in
    # that window, with a chunk the provider has and the dead sender never heard about
    sb_cfg = SandboxConfig(time_scale=0.01, seed=18, ring_s=(0.2, 1), talk_s=(1, 4), default_max_dispose_s=0,
                           agent_pickup_s=0, agents=agents, token="sb-token", default_max_retries=0,
                           answer_delay_s=1.0)
    total = run.batches * run.leads
    out: dict[str, Any] = {"kills": []}
    with SandboxThread(sb_cfg) as sb:
        env = {**daemon_env, "DIALER_RYNG_BASE_URL": sb.url, "DIALER_RYNG_TOKEN": "sb-token",
               "DIALER_UNCERTAIN_AFTER_MIN": "0.1", "DIALER_RYNG_TIMEOUT_S": "5",
               "DIALER_CONFIG": str(target_toml(tmp_path / "d.toml", agents, chunk_size=50, calls_per_agent=2,
                                                mapping="inline"))}
        with cluster(haproxy_bin, tmp_path, env) as c:
            batch_ids = []
            with c.api() as api:
                for b in range(run.batches):  # round robin: each batch posted to another instance
                    leads = [{"number": number(b * run.leads + i), "external_id": f"b{b}-{i}",
                              "agents": [agents[i % len(agents)]]} for i in range(run.leads)]
                    r = api.post("/v1/batches", json={"leads": leads})
                    assert r.status_code == 202, r.text
                    batch_ids.append(r.json()["batch_id"])
            for share, victim in run.kills:
                out["kills"].append(_kill_mid_send(c, sb, db_url, victim, int(total * share), run.timeout_s))
                if run.restart == victim:
                    c.daemons[victim].start()
                    out["back_up_s"] = wait_status(c.lb, victim, "UP", 30)
            wait_all_ended(db_url, run.timeout_s)
            poll(lambda: sql_value(db_url, "SELECT count(*) FROM batches WHERE state = 'done'") == run.batches,
                 30, "every batch done", detail=lambda: sql(db_url, "SELECT id, state FROM batches"))

            def sandbox_quiet() -> bool:
                st = sb.stats()
                t = st["callbacks"]["terminal"]
                return bool(st["calls"]["queued"] + st["calls"]["active"] == 0
                            and t["delivered"] + t["given_up"] >= st["calls"]["ended"])

            poll(sandbox_quiet, 30, "sandbox callbacks settled", detail=lambda: sb.stats()["callbacks"])
            stats, refs, dials = sb.stats(), sb.sandbox.submissions_by_ref("customField10"), sb.sandbox.dials_by_number()
            dead = {name for _, name in run.kills if name != run.restart}
            statuses = {name: c.lb.status(name) for name in NAMES}
            survivors = [d for name, d in c.daemons.items() if name not in dead]

    # ---- the balancer took the dead out, and kept the others
    assert statuses == {n: ("DOWN" if n in dead else "UP") for n in NAMES}, statuses
    # ---- every batch finished; every call dialed exactly once (counted at the sandbox)
    assert {str(r["id"]) for r in sql(db_url, "SELECT id FROM batches WHERE state = 'done'")} == set(batch_ids)
    states = call_states(db_url)
    assert sum(states.values()) == total and not any(states.get(s) for s in INTAKE), states
    dialed = sql(db_url, "SELECT id FROM calls")
    twice = {ref: n for ref, n in refs.items() if n != 1}
    assert not twice, f"submitted more than once: {list(twice.items())[:10]}"
    assert set(refs) == {call_ref(r["id"]) for r in dialed}
    assert max(dials.values()) == 1 and len(dials) == total
    assert stats["calls"]["total"] == total
    assert stats["callbacks"]["terminal"]["given_up"] == 0, stats["callbacks"]
    # ---- the chunks a dead instance had in flight were taken over through the orphan check
    for k in out["kills"]:
        # the chunk the sandbox had taken when its sender died: proved taken (its callbacks,
        # on other instances), never sent again (the dial counts above), its calls ended
        assert k["taken"], k
        sent = {r["id"] for r in sql(db_url, "SELECT id FROM chunks WHERE id = ANY($1::bigint[]) AND state = 'sent'",
                                     list(k["taken"]))}
        assert sent == set(k["taken"]), (k, sent)
        moved = sql(db_url, "SELECT DISTINCT (payload->>'chunk_id')::bigint AS chunk FROM call_events "
                            "WHERE payload->>'reason' = 'sender died mid-request'")
        # either the orphan check took it (uncertain, then proved or re-queued), or a callback
        # of its calls, landing on another instance, proved it taken first (proof of life)
        proved = {r["id"] for r in sql(db_url, "SELECT id FROM chunks WHERE id = ANY($1::bigint[]) "
                                               "AND state = 'sent'", list(k["in_flight"]))}
        assert set(k["in_flight"]) <= {r["chunk"] for r in moved} | proved, (k, moved, proved)
        later = sql_value(db_url, "SELECT count(*) FROM chunks WHERE claimed_at > $1 AND claimed_by <> $2",
                          k["at"], k["id"])
        assert later > 0, "nobody sent after the kill"
        assert k["answered"] == k["asked"], k
    # ---- survivors logged no error
    for d in survivors:
        assert not log_errors(d), "\n".join(log_errors(d)[:20])
    print(f"{total} calls, {len(NAMES)} instances behind HAProxy; kills: "
          + "; ".join(f"{k['name']} at {k['submitted']} submitted with chunks {k['in_flight']} in flight "
                      f"({k['taken']} taken by the sandbox, proved by callbacks, never resent), DOWN "
                      f"after {k['down_s']:.1f}s, {k['answered']}/{k['asked']} API answers meanwhile"
                      for k in out["kills"])
          + (f"; back UP after {out['back_up_s']:.1f}s" if "back_up_s" in out else ""))


def _kill_mid_send(c: Cluster, sb: SandboxThread, dsn: str, victim: str, submitted: int,
                   timeout: float) -> dict[str, Any]:
    """Kill ``victim`` once ``submitted`` calls reached the sandbox and it has a send in
    flight; then ask the API through the balancer until HAProxy marks it DOWN."""
    vid = c.instance_id(victim, dsn)
    poll(lambda: sb.stats()["calls"]["total"] >= submitted, timeout, f"{submitted} calls submitted", every=0.05)

    def taken() -> list[int]:
        """The victim's sends in flight whose calls the sandbox has already taken."""
        rows = sql(dsn, "SELECT k.id AS chunk, min(c.id) AS call FROM chunks k JOIN calls c ON c.chunk_id = k.id "
                        "WHERE k.state = 'sending' AND k.claimed_by = $1 GROUP BY k.id", vid)
        refs = sb.sandbox.submissions_by_ref("customField10")
        return [r["chunk"] for r in rows if call_ref(r["call"]) in refs]

    took: list[int] = []

    def some_taken() -> bool:
        took[:] = taken()
        return bool(took)

    poll(some_taken, timeout, f"a send of {victim} taken by the sandbox, not yet answered", every=0.01)
    # read before the kill: a callback of a taken chunk reaching another instance proves it
    # taken (``sent``) within milliseconds of the kill
    in_flight = sorted(set(took) | {r["id"] for r in sql(
        dsn, "SELECT id FROM chunks WHERE state = 'sending' AND claimed_by = $1", vid)})
    at = datetime.now(UTC)
    c.daemons[victim].kill9()
    asked = answered = 0
    start = time.monotonic()
    with c.api() as api:
        while c.lb.status(victim) != "DOWN":  # the window in which the balancer still tries it
            asked += 1
            answered += api.get("/v1/targets").status_code == 200
            if time.monotonic() - start > 20:
                raise AssertionError(f"haproxy still has {victim} as {c.lb.status(victim)} after 20 s")
        down_s = time.monotonic() - start
        for _ in range(10):  # and after
            asked += 1
            answered += api.get("/v1/targets").status_code == 200
    return {"name": victim, "id": vid, "at": at, "in_flight": in_flight, "taken": took, "down_s": down_s,
            "asked": asked, "answered": answered, "submitted": sb.stats()["calls"]["total"]}


def test_the_readme_configuration_is_valid_as_written(haproxy_bin: str, tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    # as written, but for the socket's directory (/run/haproxy exists where haproxy is set up)
    cfg.write_text(readme_config().replace("/run/haproxy/dialer.sock", str(tmp_path / "s.sock")))
    r = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 0 and "Configuration file is valid" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "[WARNING]" not in r.stdout + r.stderr, r.stdout + r.stderr
