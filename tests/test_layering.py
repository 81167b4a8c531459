"""The package's layers (README, "Package layout") as a check: every import (module level or inside a
function) of every module, read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "pat_ray"

# lower layers first; a module may import its own layer and the layers below it
LAYERS = {
    "base": ["errors", "export_formats", "lazy"],  # exceptions, format names, lazy public names: nothing heavy
    "core": ["core", "tracer", "models"],  # pure torch: tracing, selection, surgery, EPI maths, costs
    "plugins": ["plugins"],  # hookspecs, registry, built-ins
    "storage": ["storage"],  # local folders and URIs (pyarrow / fsspec), atomic replaces
    "config": ["config"],  # the validated config (plugin names checked), its YAML and its dotted keys
    "training": ["training", "export", "run_folder"],  # engine, pruner, records, checkpoints; export; run folders
    "shells": ["distributed", "sweep", "tracking", "lightning"],  # Ray Train / Tune, the oracle, MLflow, Lightning
    "top": ["api", "cli", "__init__", "sdk"],  # sdk: the plugin authors' surface, start policies included
}
FORBIDDEN = {  # third-party packages a layer must not touch
    "base": {"torch", "ray", "mlflow", "pydantic", "pluggy", "click", "yaml"},
    "core": {"ray", "mlflow", "pydantic", "pluggy", "click", "yaml"},
    "plugins": {"ray", "mlflow", "click"},
    "storage": {"ray", "mlflow", "click", "torch"},
    "config": {"ray", "mlflow", "click"},
    "training": {"ray", "mlflow", "click"},
}


def layer_of(module: str) -> str:
    head = module.split(".")[0]
    return next(layer for layer, members in LAYERS.items() if head in members)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_the_lower_layers_stay_free_of_ray_and_mlflow(path):
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer_of(module)
    order = list(LAYERS)
    for imported in imports(path):
        top = imported.split(".")[0]
        assert top not in FORBIDDEN.get(own, set()), f"{module} ({own}) imports {imported}"
        if top == "pat_ray" and imported != "pat_ray":
            target = layer_of(imported.removeprefix("pat_ray."))
            assert order.index(target) <= order.index(own), f"{module} ({own}) imports {imported} ({target})"


def test_every_module_belongs_to_a_layer():
    for path in MODULES:
        layer_of(".".join(path.relative_to(PACKAGE).with_suffix("").parts))  # raises StopIteration if not


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small_enough_to_read(path):
    """The style bar as a check: a module over ~400 lines or a function over ~80 does more
    than one job; split it rather than raise the limit."""
    source = path.read_text()
    assert len(source.splitlines()) <= 400, f"{path.name}: {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}: {node.name} is {length} lines"


HEAVY = ("torch", "ray", "mlflow")


def _heavy_after(probe: str) -> str:
    """The heavy packages a fresh interpreter holds after running ``probe``."""
    import subprocess
    import sys

    report = f"; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe + report], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_command_line_imports_neither_torch_ray_nor_mlflow_until_a_command_needs_them():
    """``pat-ray --version``, ``--help`` and ``runs`` answer at once: importing the CLI (every
    command registered) loads none of the heavy packages (benchmarks/cli_startup.py times it)."""
    loaded = _heavy_after("import pat_ray.cli")
    assert loaded == "", f"importing pat_ray.cli loads {loaded}"


@pytest.mark.parametrize(
    "argv",
    [["config"], ["config", "training"], ["config", "start"], ["plugins"], ["plugins", "--kind", "model"]],
    ids=" ".join,
)
def test_describing_config_keys_and_listing_plugins_import_no_torch(argv):
    """``pat-ray config`` and ``pat-ray plugins`` answer at once: the registry is built from
    names alone (built-ins, torchvision's model list and the installed plugins here register
    by import path), and nothing is imported until a name is used."""
    probe = (
        "from click.testing import CliRunner; from pat_ray.cli import main; "
        f"out = CliRunner().invoke(main, {argv!r}); assert out.exit_code == 0, out.output"
    )
    loaded = _heavy_after(probe)
    assert loaded == "", f"pat-ray {' '.join(argv)} loads {loaded}"


def test_the_ray_train_controller_side_of_a_run_imports_no_torch():
    """Train's controller process unpickles ``ProgressCallback`` (and its ``RunRecorder``) before
    it starts the workers: every second its imports take is added to every Ray run's start
    (torch alone was ~2 s)."""
    loaded = _heavy_after("import pat_ray.distributed.progress").split()
    assert "torch" not in loaded and "mlflow" not in loaded, f"the controller's callback loads {loaded}"


def test_a_run_that_uses_nothing_of_torchvision_does_not_import_it(tmp_path):
    """Importing torchvision costs about a second (it imports ``torch._dynamo``) in every run
    and every Ray worker: the default pipeline (digits, a CIFAR ResNet: config, data, model,
    EPI, pruning, training) must not load it; its tracer rules wait for it (tracer/on_import.py)."""
    import subprocess
    import sys

    probe = (
        "import sys, pat_ray; "
        f"config = pat_ray.load_config(None, ['training.epochs=3', 'output_dir={tmp_path}', 'tracking.mlflow=false']); "
        "result = pat_ray.run(config, local=True, quiet=True); "
        "assert result.flops_kept < 0.9, result; "
        "print('torchvision' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False", "the default pipeline imports torchvision"


def test_torchvision_rules_register_when_torchvision_is_imported_after_the_tracer():
    """The tracer's tables are built before torchvision is imported; its Swin attention and
    ``stochastic_depth`` are still known once it is."""
    import subprocess
    import sys

    probe = (
        "import sys; from torch import nn; "
        "from pat_ray.tracer.ops.table import op_family; from pat_ray.tracer.layers.table import family_of; "
        "assert 'torchvision' not in sys.modules; "
        "from torchvision.ops import stochastic_depth; "
        "from torchvision.models.swin_transformer import ShiftedWindowAttention, shifted_window_attention; "
        "kind = lambda f: op_family('call_function', f).kind; "
        "print(kind(stochastic_depth), kind(shifted_window_attention), "
        "type(family_of(ShiftedWindowAttention(32, [4, 4], [2, 2], 2))).__name__, family_of(nn.LSTM(2, 2)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["pass_torchvision", "sealed", "SwinAttention", "None"]


MUTATORS = {"append", "extend", "add", "update", "pop", "setdefault", "clear", "remove", "discard", "insert"}


def _builder(node: ast.AST) -> bool:
    """``builder`` or ``<something>.builder``: the tracer's GroupBuilder as rules name it."""
    return (isinstance(node, ast.Name) and node.id == "builder") or (
        isinstance(node, ast.Attribute) and node.attr == "builder"
    )


@pytest.mark.parametrize("path", [p for p in MODULES if "tracer" in p.parts or p.parent.name == "core"], ids=str)
def test_tracer_rules_change_the_builder_only_through_its_methods(path):
    """The GroupBuilder's records are private: a rule that appended to them, assigned into them
    or read a private one would bypass the checks its methods make."""
    if path.name == "state.py":
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and _builder(node.value):
            assert not node.attr.startswith("_"), f"{path.name}:{node.lineno}: builder.{node.attr}"
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
        )
        for target in targets:
            inner = target.value if isinstance(target, ast.Subscript) else target
            if isinstance(inner, ast.Attribute):
                assert not _builder(inner.value) and not (
                    isinstance(inner.value, ast.Attribute) and _builder(inner.value.value)
                ), f"{path.name}:{node.lineno}: writes {ast.unparse(target)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            owner = node.func.value
            assert not (isinstance(owner, ast.Attribute) and _builder(owner.value)), (
                f"{path.name}:{node.lineno}: {ast.unparse(node.func)}"
            )


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path) -> set[str]:
    """``imports``, plus each name a ``from`` import takes (a submodule: ``from pat_ray.plugins
    import registry``). Imports for type checking count too: a circle there is a knot as well."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_no_import_circle_even_through_imports_inside_functions_or_for_type_checking():
    """Within a layer the arrows may point either way, never around a circle: a circle means two
    modules are one concern split in two (or a lazy import hiding a knot)."""
    names = {_module_name(path): path for path in MODULES}

    def owner(imported: str) -> str | None:
        while imported and imported not in names:
            imported = imported.rpartition(".")[0]
        return imported or None

    graph = {}
    for name, path in names.items():
        targets = {owner(i) for i in _imported_names(path) if i.startswith("pat_ray.")}
        graph[name] = {t for t in targets if t and t != name and not t.startswith(name + ".")}  # a package's own parts
    for start in graph:
        seen, stack = set(), [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                assert nxt != start, "import circle: " + " -> ".join([*trail, nxt])
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
