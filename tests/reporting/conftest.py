from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from kernel.audit.sample import seed_demo_sample
from kernel.db.connect import Database

APT_TIMEOUT_S = 600


@pytest.fixture
def sample_db(database: Database) -> Database:
    """A database holding the demo tenants with two frozen months of sample traffic."""
    with database.connect("owner", autocommit=True) as conn:
        seed_demo_sample(conn)
    return database


@pytest.fixture
def sample_ids(sample_db: Database) -> dict[str, uuid.UUID]:
    from kernel.demo.tenants import DEMO_SITES

    return {d.public_id: d.site_id for d in DEMO_SITES}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium, installed from Debian's packages when absent (as root)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=APT_TIMEOUT_S, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=False,
            timeout=APT_TIMEOUT_S,
            env=env,
            capture_output=True,
        )
        found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI=true (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def screenshot(chromium: str, html: Path, png: Path, profile: Path) -> None:
    """Open ``html`` in headless Chromium with networking off and save a screenshot."""
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            # Every host resolves to nowhere: a report that needs the network shows it blank.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={profile}",
            "--window-size=1100,1600",
            f"--screenshot={png}",
            html.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
