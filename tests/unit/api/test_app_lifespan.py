"""The API's start-up: what it does before it serves the first request.

In a fresh interpreter (DSPy is imported by other tests of this process), pointed at a
Prefect API nobody listens on: entering the lifespan opens no connection.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    os.environ["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    from api.main import create_app, lifespan

    print("imported at load:", "dspy" in sys.modules)

    async def main():
        async with lifespan(create_app()):
            print("imported when serving:", "dspy" in sys.modules)

    asyncio.run(main())
    """
)


def test_dspy_is_imported_before_the_first_submission(tmp_path):
    """POST /run resolves names in DSPy; a first submission that imported it waited ~1 s
    and held every concurrent one on the import lock (bench/first_submit.py)."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "HOME": str(tmp_path),
            "PREFECT_HOME": str(tmp_path / "prefect"),
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported at load: False" in done.stdout  # else this test could not fail
    assert "imported when serving: True" in done.stdout
