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


USER_SCRIPT = (
    "import pat_ray\n"
    "result = pat_ray.run(pat_ray.load_config('x.yaml'), local=True)\n"
    "reveal_type(result)\n"
    "reveal_type(pat_ray.export_model)\n"
    "try:\n    pass\nexcept (pat_ray.ConfigError, pat_ray.CheckpointError, pat_ray.BudgetError):\n    pass\n"
    "pat_ray.run(locall=True)\n"
)


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory) -> str:
    """One mypy run (it is slow to start) over the package, with pyproject's settings, and a
    user's script beside it."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (pip install -e .[test])")
    script = tmp_path_factory.mktemp("user") / "user.py"
    script.write_text(USER_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "pat_ray", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.stdout + done.stderr


def test_the_package_type_checks(mypy_output):
    assert "Revealed type" in mypy_output, mypy_output  # mypy ran to the end
    problems = [line for line in mypy_output.splitlines() if "user.py" not in line and line.strip()]
    assert not problems, mypy_output


def test_a_users_script_sees_the_public_api_typed(mypy_output):
    """``pat_ray.run`` is a ``RunResult`` to a type checker, not ``Any``; the exceptions are
    exported; a misspelled keyword is caught before anything runs."""
    out = mypy_output
    assert 'Revealed type is "pat_ray.training.records.RunResult"' in out, out
    assert "def (checkpoint:" in out, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'Unexpected keyword argument "locall"' in errors[0], out


def test_the_public_names_are_all_there_and_the_version_is_the_installed_one():
    from importlib.metadata import version

    import pat_ray

    assert pat_ray.__version__ == version("pat-ray")
    assert set(pat_ray.__all__) == {"hookimpl", "LayerRule", "__version__", *pat_ray._LAZY}
    for name in pat_ray.__all__:
        assert getattr(pat_ray, name) is not None, name
    assert issubclass(pat_ray.ConfigError, ValueError) and pat_ray.RunResult.__name__ == "RunResult"
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        pat_ray.bogus  # noqa: B018


def test_policy_and_role_names_are_one_list_each():
    """Every start policy's `kind` is a StartKind, the oracle's policies are its non-grid ones,
    and the roles the surgery knows are the Role literal's."""
    from typing import get_args

    from pat_ray.config import ORACLE_POLICIES, OraclePolicy, StartKind
    from pat_ray.config.start import BuiltinStartPolicy
    from pat_ray.tracer.graph import PRODUCER_ROLES, Role

    kinds = {get_args(cls.model_fields["kind"].annotation)[0] for cls in get_args(BuiltinStartPolicy)}
    assert kinds == set(get_args(StartKind))
    assert set(ORACLE_POLICIES) == set(get_args(OraclePolicy)) == kinds - {"fixed"}
    assert set(PRODUCER_ROLES) <= set(get_args(Role))
