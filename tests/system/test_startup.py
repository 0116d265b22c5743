"""Start-up cost: what `monitor` imports before it needs it, and the collector around heavy imports."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from monitor.backends.hf.imports import long_lived_imports

HEAVY = ("torch", "transformers", "sqlalchemy", "sqlmodel", "evidently", "apscheduler")


def loaded_after(code: str) -> set[str]:
    """Top-level packages of ``HEAVY`` imported by ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_cli_and_the_eval_path_import_no_heavy_library() -> None:
    assert loaded_after("import monitor.cli, monitor.evals.loop, monitor.backends") == set()


def test_the_store_imports_sqlalchemy_on_first_use() -> None:
    assert loaded_after("from monitor.store import ItemResult") == set()
    assert {"sqlalchemy", "sqlmodel"} <= loaded_after("from monitor.store import Store")


def test_heavy_imports_leave_the_collector_as_they_found_it() -> None:
    code = "import gc\n{}\nfrom monitor.backends.hf import backend\nprint(gc.isenabled(), gc.get_freeze_count() > 0)"
    for setup, enabled in (("", "True"), ("gc.disable()", "False")):
        out = subprocess.run(
            [sys.executable, "-c", code.format(setup)], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == [enabled, "True"]


def test_a_block_that_imports_nothing_new_freezes_nothing() -> None:
    frozen = gc.get_freeze_count()
    garbage = [[n] for n in range(100)]
    with long_lived_imports():
        import json  # already imported

        json.dumps(garbage)
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(
    given: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import monitor.backends.hf.backend, os; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == expected
