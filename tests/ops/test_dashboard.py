"""The dashboard JSON: valid against Grafana's schema, and built for an on-call engineer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.ops.conftest import DASHBOARD, GRAFANA, SCHEMA

dash = json.loads(DASHBOARD.read_text())
panels = [p for p in dash["panels"] if p["type"] != "row"]


def test_dashboard_validates_against_the_grafana_schema() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    r = subprocess.run([exe, "--schemafile", str(SCHEMA), str(DASHBOARD)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_is_grafanas_and_strict() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$ref"] == "#/definitions/Dashboard"
    assert schema["definitions"]["Dashboard"]["additionalProperties"] is False
    assert "__inputs" not in dash


def test_panels_have_titles_descriptions_units_and_unique_ids() -> None:
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["title"] and p.get("description"), p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']}: no unit"
        assert p["targets"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps at {(x, y)}"
                cells.add((x, y))


def test_target_variable_filters_every_target_labelled_metric() -> None:
    var = {v["name"]: v for v in dash["templating"]["list"]}
    assert var["target"]["type"] == "query" and var["target"]["includeAll"] and var["target"]["multi"]
    assert var["datasource"]["type"] == "datasource" and var["datasource"]["query"] == "prometheus"
    target_labelled = ("dialer_calls_in_flight", "dialer_pacing_limit", "dialer_ready_agents",
                       "dialer_call_outcomes_total", "dialer_call_submit_to_end_seconds_bucket",
                       "dialer_leads_ingested_total", "dialer_leads_rejected_total", "dialer_calls{",
                       "dialer_callback_wait_seconds", "dialer_scheduled_callbacks")
    for p in panels:
        for t in p["targets"]:
            for name in target_labelled:
                for m in re.finditer(re.escape(name.rstrip("{")) + r"\{([^}]*)\}", t["expr"]):
                    assert 'target=~"$target"' in m.group(1), f"{p['title']}: {t['expr']}"


def test_the_on_call_essentials_are_on_the_dashboard() -> None:
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in ("dialer_provider_requests_total", "dialer_provider_request_duration_seconds_bucket",
                   "dialer_callbacks_total", "dialer_callback_duration_seconds_bucket",
                   "dialer_calls_in_flight", "dialer_pacing_limit", "dialer_ready_agents",
                   "dialer_call_outcomes_total", "dialer_call_submit_to_end_seconds_bucket",
                   "dialer_inbox_files_total", "dialer_leads_rejected_total", "dialer_spool_depth",
                   "dialer_webhook_backlog", "dialer_db_pool_size", "dialer_db_pool_idle"):
        assert needed in exprs, needed


def test_provisioning_points_at_the_dashboard_and_a_prometheus_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert dash["templating"]["list"][0]["current"]["value"] == source["uid"]
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dialer.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
