"""Schemathesis against the daemon's own /openapi.json: no 5xx, no schema violations.

Text bodies (text/csv batches, DNC files) are fuzzed for crashes and response
conformance only: any string is a schema-valid text body, so "valid data accepted" and
"invalid data rejected" have no meaning for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.conftest import TOKEN, DaemonProcess, _create_db, free_port, with_database

EXAMPLES = int(os.environ.get("DIALER_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def daemon_url(pg_server: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(
        DIALER_DATABASE_URL=with_database(pg_server, _create_db(pg_server)),
        DIALER_STATE_DIR=str(tmp / "var"), DIALER_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
        DIALER_API_TOKENS=TOKEN, DIALER_CALLBACK_SECRET="fuzz-secret", DIALER_LOG_FORMAT="json",
        DIALER_LOG_LEVEL="warning", DIALER_RYNG_BASE_URL="http://127.0.0.1:9", DIALER_RYNG_TOKEN="x",
    )
    d = DaemonProcess(env, tmp).start()
    try:
        yield d.url
    finally:
        d.stop()


def test_api_conforms_to_its_schema(daemon_url: str) -> None:
    schema = schemathesis.openapi.from_url(daemon_url + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 13
    strategies = [
        (op, mode, op.as_strategy(generation_mode=mode))
        for op in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    @given(data=st.data())
    def run(data: Any) -> None:
        for op, mode, strategy in strategies:
            try:
                case = data.draw(strategy, label=f"{mode.value} {op.label}")
            except Exception:
                continue
            text_body = case.media_type is not None and case.media_type.startswith("text/")
            excluded = [positive_data_acceptance, negative_data_rejection] if text_body else []
            if op.label == "POST /v1/dnc" and isinstance(case.body, dict) and case.body.get("expires_at"):
                # expires_at must be in the future: a rule relative to now no schema can state
                excluded.append(positive_data_acceptance)
            case.call_and_validate(base_url=daemon_url, headers=auth, excluded_checks=excluded)

    run()
