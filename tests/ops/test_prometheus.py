"""A real Prometheus scraping a real daemon that dials sandbox batches end to end.

One daemon and one Prometheus for the whole module: leads come in over the API and the
inbox, calls flow through the in-process Ryng sandbox, callbacks and result webhooks come
back; then every dashboard query and alert rule is evaluated by Prometheus itself.
The last test stops the daemon and reads its whole log for numbers and secrets.
"""

from __future__ import annotations

import http.server
import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import TOKEN, DaemonProcess, free_port, wait_for
from tests.ops.conftest import (
    ALERTS,
    DASHBOARD,
    Prometheus,
    daemon_env_for,
    daemon_toml,
    fetch,
    sample_names,
    scrape,
)
from tests.ops.test_rules import dashboard_queries, grafana_to_promql

CONFIG = daemon_toml(2, """
[targets.sales.recycle]
no_answer = { after_min = 0.01, max = 1 }

[targets.support]
kind = "campaign"
agents = ["dave"]
calling_hours = "00:00-24:00"
max_dispose_s = 1
leg_direction = "customer-first"

[providers.ryng]
max_calls_per_s = 50
""")

API_NUMBERS = [f"+1415555{1000 + i:04d}" for i in range(14)]
INBOX_NUMBERS = [f"+1212555{2000 + i:04d}" for i in range(6)]
SUPPORT_NUMBERS = [f"+1312555{3000 + i:04d}" for i in range(3)]
ALL_NUMBERS = API_NUMBERS + INBOX_NUMBERS + SUPPORT_NUMBERS
TERMINAL = ("answered", "no_answer", "busy", "unreachable", "failed", "rejected_by_provider",
            "cancelled", "expired", "capped")
LIVE = ("pending", "scheduled", "retry_wait", "submitting", "uncertain", "queued", "assigned", "connected")


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        _Hook.received.append(self.rfile.read(n))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Ops:
    daemon: DaemonProcess
    prom: Prometheus
    db_url: str
    state: Path


def ended(db_url: str) -> int:
    return int(fetch(db_url, "SELECT count(*) AS n FROM calls WHERE state = ANY($1::text[])", list(TERMINAL))[0]["n"])


def live(db_url: str) -> int:
    return int(fetch(db_url, "SELECT count(*) AS n FROM calls WHERE state = ANY($1::text[])", list(LIVE))[0]["n"])


@pytest.fixture(scope="module")
def ops(module_db_url: str, tmp_path_factory: pytest.TempPathFactory,
        prometheus_bin: tuple[str, str]) -> Iterator[Ops]:
    work = tmp_path_factory.mktemp("ops-prometheus")
    (work / "dialer.toml").write_text(CONFIG)
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = daemon_env_for(module_db_url, work / "var", DIALER_CONFIG=str(work / "dialer.toml"))
    daemon = DaemonProcess(env, work)
    prom: Prometheus | None = None
    try:
        daemon.start()
        prom = Prometheus(prometheus_bin[0], work / "prometheus", f"127.0.0.1:{daemon.port}", [ALERTS]).start()
        with daemon.client() as c:
            leads = [{"number": n, "external_id": f"crm-{i}"} for i, n in enumerate(API_NUMBERS)]
            leads.append({"number": "12"})  # invalid
            r = c.post("/v1/batches", json={"target": "sales", "leads": leads,
                                            "result_webhook_url": f"http://127.0.0.1:{hook.server_port}/hook"})
            assert r.status_code == 202, r.text
            r = c.post("/v1/batches", json={"target": "support",
                                            "leads": [{"number": n} for n in SUPPORT_NUMBERS]})
            assert r.status_code == 202, r.text
        inbox = work / "var" / "inbox" / "sales"
        rows = "\n".join([*INBOX_NUMBERS, API_NUMBERS[0]])  # the last one is a duplicate
        (inbox / "more.csv.part").write_text("number\n" + rows + "\n")
        (inbox / "more.csv.part").rename(inbox / "more.csv")
        wait_for(lambda: ended(module_db_url) >= 12, 60, "a dozen calls ended")
        wait_for(lambda: prom.query('sum(dialer_call_outcomes_total) > 0 and on () '
                                    'sum(count_over_time(up{job="dialer"}[5m])) >= 5'), 60,
                 "Prometheus to see ended calls")
        yield Ops(daemon, prom, module_db_url, work / "var")
    finally:
        if prom is not None:
            prom.stop()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        hook.shutdown()


def test_promtool_check_metrics_on_a_real_scrape(ops: Ops, prometheus_bin: tuple[str, str]) -> None:
    text = scrape(ops.daemon.url)
    r = subprocess.run([prometheus_bin[1], "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    names = sample_names(text)
    assert names and all(n.startswith("dialer_") for n in names), sorted(n for n in names if not n.startswith("dialer_"))


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names used by the dashboard (queries and variables) and the alert rules."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = {f"panel {title!r} {ref}": expr for title, ref, expr in dashboard_queries()}
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            exprs[f"variable {v['name']}"] = q["query"]
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in g["rules"]:
            exprs[f"alert {rule['alert']}"] = rule["expr"]
    out: dict[str, set[str]] = {}
    for where, expr in exprs.items():
        for name in re.findall(r"\b(dialer_[a-z0-9_]+)", expr):
            out.setdefault(name, set()).add(where)
    return out


def test_every_metric_the_dashboard_and_alerts_name_is_exported(ops: Ops) -> None:
    exported = sample_names(scrape(ops.daemon.url))
    used = referenced_metrics()
    assert len(used) >= 25
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"named in grafana/ but not in /metrics: {missing}"


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def test_every_panel_query_returns_data_from_prometheus(ops: Ops) -> None:
    empty = []
    checked = 0
    for title, ref, expr in dashboard_queries():
        promql = grafana_to_promql(expr, target="sales|support")
        result = ops.prom.query(promql)
        checked += 1
        if not result or not _finite(result):
            empty.append(f"{title} [{ref}]: {promql} -> {result}")
    assert checked >= 40
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_target_variable_lists_the_configured_targets(ops: Ops) -> None:
    data = ops.prom.api("/api/v1/label/target/values", **{"match[]": "dialer_calls_in_flight"})
    assert sorted(data) == ["sales", "support"]


def test_alert_rules_load_and_evaluate_on_real_data(ops: Ops) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = ops.prom.api("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(evaluated, 20, "every rule evaluated once")
    names = {r["name"] for r in rules}
    assert {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]} == names
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    firing = [a for a in ops.prom.api("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, f"a healthy daemon fires alerts: {firing}"


def test_metrics_agree_with_the_database_and_duplicates_never_count(ops: Ops) -> None:
    # a terminal callback Ryng retries: replay one we already stored, byte for byte
    row = fetch(ops.db_url, """
        SELECT e.payload, k.token FROM call_events e JOIN calls c ON c.id = e.call_id
        JOIN chunks k ON k.id = c.chunk_id
        WHERE e.kind = 'callback_terminal' AND e.applied ORDER BY e.id LIMIT 1""")[0]
    payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
    before = _value(scrape(ops.daemon.url), "dialer_callback_events_total", kind="terminal", result="duplicate")
    r = httpx.post(f"{ops.daemon.url}/callbacks/ryng/terminal/{row['token']}", json=payload["body"], timeout=10)
    assert r.status_code == 200, r.text
    forged = httpx.post(f"{ops.daemon.url}/callbacks/ryng/terminal/chunk.1.{'0' * 32}", json={}, timeout=10)
    assert forged.status_code == 401

    def settled() -> bool:  # every call ended, nothing waiting: counters and rows must agree now
        return live(ops.db_url) == 0

    try:
        wait_for(settled, 60, "every call to end")
    except AssertionError as e:  # say what is stuck
        stuck = fetch(ops.db_url, "SELECT c.state, c.attempt, c.not_before, k.state AS chunk, k.error "
                                  "FROM calls c LEFT JOIN chunks k ON k.id = c.chunk_id "
                                  "WHERE c.state = ANY($1::text[])", list(LIVE))
        raise AssertionError(f"{e}: {[dict(r) for r in stuck]}") from None

    def quiet() -> str | None:  # state gauges are re-read from the database at most every 0.5 s
        text = scrape(ops.daemon.url)
        gauges = sum(_values(text, "dialer_calls_in_flight").values()) + sum(_values(text, "dialer_calls").values())
        return text if gauges == 0 else None

    text = wait_for(quiet, 5, "state gauges to show no live call")
    assert _value(text, "dialer_callback_events_total", kind="terminal", result="duplicate") >= before + 1
    assert _value(text, "dialer_callbacks_total", kind="terminal", result="forged") >= 1
    outcomes = _values(text, "dialer_call_outcomes_total")
    db = {(x["target"], x["state"]): x["n"] for x in fetch(
        ops.db_url, "SELECT target, state, count(*)::int AS n FROM calls WHERE state = ANY($1::text[]) "
                    "GROUP BY target, state", list(TERMINAL))}
    counted = {(dict(k)["target"], dict(k)["outcome"]): int(v) for k, v in outcomes.items() if v}
    assert counted == db
    submitted = sum(_values(text, "dialer_calls_submitted_total").values())
    assert submitted == fetch(ops.db_url, "SELECT sum(rows)::int AS n FROM chunks WHERE state = 'sent'")[0]["n"]
    ingested = _values(text, "dialer_leads_ingested_total")
    assert ingested[(("source", "api"), ("target", "sales"))] == len(API_NUMBERS)
    assert ingested[(("source", "inbox"), ("target", "sales"))] == len(INBOX_NUMBERS)
    rejected = _values(text, "dialer_leads_rejected_total")
    assert rejected[(("reason", "invalid"), ("target", "sales"))] == 1
    assert rejected[(("reason", "duplicate"), ("target", "sales"))] == 1
    assert _value(text, "dialer_inbox_files_total", target="sales", result="ingested") == 1
    assert _value(text, "dialer_recycles_total", target="sales", reason="no_answer") == fetch(
        ops.db_url, "SELECT count(*)::int AS n FROM calls WHERE attempt > 1")[0]["n"]
    wait_for(lambda: _value(scrape(ops.daemon.url), "dialer_webhook_deliveries_total", result="delivered")
             >= len(API_NUMBERS), 30, "result webhooks delivered")


def test_logs_never_show_a_full_number_or_a_token(ops: Ops) -> None:
    """A full run's JSON logs (the daemon stops here): no full phone number, no secret."""
    with ops.daemon.client() as c:  # a few more chances to leak: errors that echo input
        c.post("/v1/dnc", json={"numbers": [API_NUMBERS[1]]})
        c.get("/v1/calls", params={"external_id": "crm-3"})
        c.post("/v1/batches", json={"target": "nope", "leads": [{"number": API_NUMBERS[2]}]})
        httpx.get(ops.daemon.url + "/v1/targets", headers={"Authorization": "Bearer wrong-" + TOKEN})
    started = time.monotonic()
    assert ops.daemon.stop() == 0
    assert time.monotonic() - started < 30
    lines = ops.daemon.log.read_text().splitlines()
    assert len(lines) > 5
    chunk_tokens = [r["token"] for r in fetch(ops.db_url, "SELECT token FROM chunks")]
    secrets = [TOKEN, "test-callback-secret", *chunk_tokens, *(t.rsplit(".", 1)[1] for t in chunk_tokens)]
    needles = [n[-10:] for n in ALL_NUMBERS]  # the national number: any format that keeps the digits
    leaks = []
    for i, line in enumerate(lines, 1):
        if line.startswith("{"):
            json.loads(line)  # every record is one JSON object
        digits = re.sub(r"(?<=\d)[ ().\-](?=\d)", "", line)
        for n in needles:
            if n in digits:
                leaks.append(f"line {i}: number {n}: {line[:300]}")
        for s in secrets:
            if s in line:
                leaks.append(f"line {i}: secret {s[:6]}…: {line[:300]}")
    assert not leaks, f"{len(leaks)} leaks, first ones:\n" + "\n".join(leaks[:10])
    assert any('"level":"info"' in line and "dialer running" in line for line in lines)


def _values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _value(text: str, name: str, **labels: str) -> float:
    return _values(text, name).get(tuple(sorted(labels.items())), 0.0)
