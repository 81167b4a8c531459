"""The typed contracts as a check: mypy over the whole package (strict for ``core``), with
the settings in pyproject.toml, so a change that breaks a plugin protocol, a record's field
or a Literal of policy / role names fails the suite, not a user's run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed (pip install -e .[test])")
def test_the_package_type_checks():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_policy_and_role_names_are_one_list_each():
    """Every start policy's `kind` is a StartKind, the oracle's policies are its non-grid ones,
    and the roles the surgery knows are the Role literal's."""
    from typing import get_args

    from pat_ray.config import ORACLE_POLICIES, OraclePolicy, StartKind, StartPolicy
    from pat_ray.core.graph import PRODUCER_ROLES, Role

    kinds = {get_args(cls.model_fields["kind"].annotation)[0] for cls in get_args(get_args(StartPolicy)[0])}
    assert kinds == set(get_args(StartKind))
    assert set(ORACLE_POLICIES) == set(get_args(OraclePolicy)) == kinds - {"fixed"}
    assert set(PRODUCER_ROLES) <= set(get_args(Role))
