"""A non-editable install works: wheel built, installed into a fresh venv, `dialer migrate`
run from outside the checkout against an empty database creates the schema.

The fresh venv gets the package only from the wheel; its dependencies come from this test
venv's site-packages through a `.pth` path line. Directories named in a `.pth` are appended
to sys.path without their own `.pth` files being run, so the editable finder installed here
(`__editable__*.pth`) cannot leak in; the test still checks where `dialer` was imported from.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT

# What a build must not see: local state, caches, earlier builds (setuptools' build/lib
# keeps deleted files), and the test venv itself.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "var", "bench", "tests",
)


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _tables(dsn: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {r["tablename"] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the working tree (not the last commit)."""
    src = tmp_path_factory.mktemp("src") / "dialer"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE, symlinks=True)
    out = tmp_path_factory.mktemp("wheels")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "-w", str(out), str(src)], cwd=out)
    (whl,) = out.glob("dialer-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (not editable) and our dependencies on its path."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root)
    py = root / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
          str(wheel)], cwd=root)
    fresh_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           cwd=root).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "zz_test_venv_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory with no checkout in it (nothing to import `dialer` from by accident)."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_wheel_carries_migrations_queries_and_ui_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(n for n in names if n.startswith("dialer/sql/") and n.endswith(".sql"))
    assert [n.rsplit("/", 1)[1] for n in migrations] == sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert migrations, "no migration in the wheel"
    assert "dialer/store/queries.sql" in names
    assert "dialer/ui/templates/base.html" in names
    assert "dialer/ui/static/app.css" in names
    assert "dialer/py.typed" in names
    # the Grafana dashboard, its provisioning and the alert rules (with their promtool tests)
    assert {"dialer/grafana/dashboards/dialer.json", "dialer/grafana/alerts.yml",
            "dialer/grafana/alerts_test.yml"} <= names
    shipped = {f"dialer/{p.relative_to(ROOT / 'dialer').as_posix()}"
               for p in (ROOT / "dialer" / "grafana").rglob("*") if p.is_file()}
    assert shipped - names == set()


def test_top_level_grafana_is_a_symlink_into_the_package() -> None:
    # SPEC §2 wants grafana/ at the top; one copy, in git as a symlink (mode 120000) like sql/
    assert (ROOT / "grafana").is_symlink()
    assert (ROOT / "grafana").resolve() == (ROOT / "dialer" / "grafana").resolve()
    assert (ROOT / "grafana" / "dashboards" / "dialer.json").is_file()


def test_installed_package_is_imported_from_the_fresh_venv(venv: Path, outside: Path) -> None:
    probe = (
        "import dialer, dialer.store.queries as q, dialer.store.migrate as m, dialer.ui.render as r\n"
        "print(dialer.__file__)\n"
        "print(len(q.Q.names()), len(m.available()))\n"
        "env = r.environment()\n"
        "print(all(env.get_template(t) is not None for t in env.list_templates()))\n"
        "print(len(env.list_templates()), (r.STATIC / 'app.css').is_file())\n"
    )
    where, counts, templates_ok, ui = _run([str(venv / "bin" / "python"), "-c", probe], cwd=outside,
                                           env=_env()).splitlines()
    assert Path(where).is_relative_to(venv), f"dialer imported from {where}, not the fresh venv"
    n_queries, n_migrations = map(int, counts.split())
    assert n_queries > 0 and n_migrations == len(list((ROOT / "sql").glob("*.sql")))
    assert templates_ok == "True"
    n_templates, static_ok = ui.split()
    assert int(n_templates) == len(list((ROOT / "dialer" / "ui" / "templates").glob("*.html")))
    assert static_ok == "True"


def test_installed_dialer_migrates_an_empty_database(venv: Path, outside: Path, empty_db: str) -> None:
    dialer = str(venv / "bin" / "dialer")
    env = _env(DIALER_DATABASE_URL=empty_db, DIALER_STATE_DIR=str(outside / "state"))
    assert "migrate" in _run([dialer, "--help"], cwd=outside, env=env)
    out = _run([dialer, "migrate"], cwd=outside, env=env)
    assert "applied 0001_" in out
    assert {"calls", "batches", "chunks", "schema_migrations"} <= _tables(empty_db)
    assert "schema is current" in _run([dialer, "migrate"], cwd=outside, env=env)


def test_installed_dialer_without_its_migrations_refuses_to_migrate(
    venv: Path, outside: Path, empty_db: str
) -> None:
    (pkg_sql,) = venv.glob("lib/python*/site-packages/dialer/sql")
    aside = pkg_sql.with_name("sql.aside")
    env = _env(DIALER_DATABASE_URL=empty_db, DIALER_STATE_DIR=str(outside / "state"))
    pkg_sql.rename(aside)  # a broken install: the package without its migrations
    try:
        r = subprocess.run([str(venv / "bin" / "dialer"), "migrate"], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=60)
    finally:
        aside.rename(pkg_sql)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"no migration directory at {pkg_sql}" in r.stderr
    assert "schema is current" not in r.stdout
    assert _tables(empty_db) == set()
