"""Alert rules and dashboard queries through promtool: syntax, and the rules' unit tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.ops.conftest import ALERTS, ALERTS_TEST, DASHBOARD, GRAFANA

# Grafana's variables, replaced as Grafana would before a query reaches Prometheus.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "1h", "${target}": ".*",
                "$target": ".*"}


def grafana_to_promql(expr: str, target: str = ".*") -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, target if k in ("$target", "${target}") else v)
    assert "$" not in expr, f"a Grafana variable left in {expr!r}"
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["refId"], t["expr"]))
    return out


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def test_promtool_check_rules(prometheus_bin: tuple[str, str]) -> None:
    r = run([prometheus_bin[1], "check", "rules", str(ALERTS)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_test_rules(prometheus_bin: tuple[str, str]) -> None:
    r = run([prometheus_bin[1], "test", "rules", ALERTS_TEST.name], cwd=GRAFANA)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_a_runbook_entry() -> None:
    alerts = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in tests for c in t["alert_rule_test"] if not c.get("exp_alerts")}
    assert set(alerts) <= fired, f"alerts never shown firing: {set(alerts) - fired}"
    assert set(alerts) <= quiet, f"alerts never shown quiet: {set(alerts) - quiet}"
    runbook = (GRAFANA.parent / "docs" / "runbook.md").read_text()
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in g["rules"]:
            assert f"## {rule['alert']}\n" in runbook, f"no runbook section for {rule['alert']}"
            assert rule["annotations"]["runbook"] == f"docs/runbook.md#{rule['alert'].lower()}"
            assert rule["labels"]["severity"] in ("warning", "critical")


def test_every_dashboard_query_is_valid_promql(prometheus_bin: tuple[str, str], tmp_path: Path) -> None:
    """Each panel query, wrapped as a recording rule, passes ``promtool check rules``."""
    rules = [{"record": f"dialer:panel_{i}", "expr": grafana_to_promql(expr)}
             for i, (_, _, expr) in enumerate(dashboard_queries())]
    assert len(rules) >= 30
    f = tmp_path / "panels.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    r = run([prometheus_bin[1], "check", "rules", str(f)])
    assert r.returncode == 0, r.stdout + r.stderr
