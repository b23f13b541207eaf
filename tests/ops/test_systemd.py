"""The unit file: ``systemd-analyze verify`` clean, and a hardening score that stays low."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT, UNIT

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (verify checks it)."""
    text = UNIT.read_text()
    exe = shutil.which("dialer") or str(Path(sys.executable).with_name("dialer"))
    assert Path(exe).exists(), exe
    out = tmp_path / "dialer.service"
    out.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", text, flags=re.M))
    return out


def unit_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_unit_declares_notify_hardening_and_drain() -> None:
    k = unit_keys()
    assert k["Type"] == ["notify"]
    assert k["Restart"] == ["on-failure"]
    assert k["EnvironmentFile"]
    assert k["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(k["TimeoutStopSec"][0]) <= 30
    assert k["WatchdogSec"]
    for key, value in {"DynamicUser": "yes", "StateDirectory": "dialer", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
        assert k[key] == [value], key
    assert "AF_UNIX" in k["RestrictAddressFamilies"][0]
    assert "@system-service" in k["SystemCallFilter"]
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string(UNIT.read_text())
    assert cp.sections() == ["Unit", "Service", "Install"]
    env_example = (ROOT / "systemd" / "dialer.env.example").read_text()
    for var in ("DIALER_DATABASE_URL", "DIALER_RYNG_TOKEN", "DIALER_API_TOKENS", "DIALER_PUBLIC_URL"):
        assert f"{var}=" in env_example


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = local_unit(tmp_path)
    assert analyze is not None
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # unknown keys only warn: any output is a finding


@needs_analyze
def test_systemd_analyze_security_exposure_stays_low(tmp_path: Path) -> None:
    unit = local_unit(tmp_path)
    assert analyze is not None
    r = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
                       capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert r.returncode == 0, f"exposure {m.group(1)} above 2.0:\n{r.stdout}"
    assert float(m.group(1)) <= 2.0
