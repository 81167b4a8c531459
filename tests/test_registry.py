"""The plugin registry: built-ins, entry-point plugins, duplicates, misspelled hooks, CLI."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import pat_ray
from pat_ray.cli import main
from pat_ray.errors import PluginError
from pat_ray.plugins import registry


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real distribution on sys.path with a ``pat_ray`` entry point, as pip would leave it."""
    (tmp_path / "my_criterion_plugin.py").write_text(
        textwrap.dedent("""
        import torch
        import pat_ray
        from pat_ray.core.criterion import Criterion

        class Random(Criterion):
            def scores(self, model, graph):
                return {g.name: torch.rand(g.size) for g in graph.prunable}

        @pat_ray.hookimpl
        def pat_ray_register_criteria(register):
            register("random", Random)
    """)
    )
    dist = tmp_path / "pat_ray_random-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pat-ray-random\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[pat_ray]\nrandom = my_criterion_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_criterion_plugin", None)


def test_builtins_are_registered(fresh_registry):
    reg = registry.get_registry()
    assert {"magnitude", "bn_scale", "taylor"} <= set(reg.names("criterion"))
    assert "native" in reg.names("surgery")  # plugin distributions may add more (torch_pruning)
    assert reg.get("surgery", "native").distribution == "pat-ray (built-in)"
    assert {"cifar_resnet20", "cifar_resnet56", "resnet50", "mobilenet_v2"} <= set(reg.names("model"))
    assert reg.get("criterion", "taylor").distribution == "pat-ray (built-in)"


def test_unknown_name_lists_the_choices(fresh_registry):
    with pytest.raises(KeyError, match="unknown criterion 'magnitud'; registered: ") as err:
        registry.get_registry().get("criterion", "magnitud")
    listed = str(err.value).split("registered: ")[1].strip("'\"").split(", ")
    assert listed == sorted(listed) and {"bn_scale", "magnitude", "taylor"} <= set(listed)


def test_bad_factory_parameters_name_the_plugin(fresh_registry):
    with pytest.raises(ValueError, match="criterion 'magnitude'.*bad parameters"):
        registry.get_registry().create("criterion", "magnitude", q=3)


def test_entry_point_plugin_is_loaded_with_its_distribution(fresh_registry, installed_plugin, monkeypatch):
    monkeypatch.delenv(registry.AUTOLOAD_SWITCH, raising=False)
    entry = registry.get_registry().get("criterion", "random")
    assert entry.distribution == "pat-ray-random 1.2"
    result = CliRunner().invoke(main, ["plugins", "--kind", "criterion"])
    assert result.exit_code == 0
    assert "random" in result.output and "pat-ray-random 1.2" in result.output


def test_autoload_switch_skips_entry_points(fresh_registry, installed_plugin, monkeypatch):
    monkeypatch.setenv(registry.AUTOLOAD_SWITCH, "1")
    assert "random" not in registry.get_registry().names("criterion")


def test_duplicate_names_fail_naming_both_plugins(fresh_registry):
    class Clash:
        @pat_ray.hookimpl
        def pat_ray_register_criteria(self, register):
            register("magnitude", object)

    with pytest.raises(PluginError, match="registered twice.*builtin.catalog.*clash"):
        registry.register_plugin(Clash(), name="clash")
    # the failed plugin left nothing behind
    assert registry.get_registry().get("criterion", "magnitude").plugin.endswith("builtin.catalog")


def test_misspelled_hook_fails_loudly(fresh_registry):
    class Typo:
        @pat_ray.hookimpl
        def pat_ray_register_criterion(self, register):  # missing the trailing "a"
            pass

    with pytest.raises(PluginError, match="plugin 'typo'.*pat_ray_register_criterion"):
        registry.register_plugin(Typo(), name="typo")
    assert "typo" not in [name for name, _ in registry.get_plugin_manager().list_name_plugin()]


def test_plugin_raising_during_registration_is_named(fresh_registry):
    class Broken:
        @pat_ray.hookimpl
        def pat_ray_register_models(self, register):
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="plugin 'broken'.*boom"):
        registry.register_plugin(Broken(), name="broken")


def test_plugin_failing_to_import_names_it(fresh_registry, tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency foo')\n")
    dist = tmp_path / "pat_ray_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pat-ray-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pat_ray]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.AUTOLOAD_SWITCH, raising=False)
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 2
    assert "plugin 'broken' (pat-ray-broken 0.1) failed to load" in result.output
    assert "missing dependency foo" in result.output
    assert "Traceback" not in result.output


def test_a_module_registered_in_process_reaches_a_fresh_process(
    fresh_registry, installed_plugin, tmp_path, monkeypatch
):
    """What a Ray worker gets: the module's import name, and a copy of its source made when it was
    registered, which Ray's ``py_modules`` puts on the worker's path (a fresh process with that
    copy's folder on ``PYTHONPATH`` here): deleting the original afterwards changes nothing. A
    worker without the copy is told which plugin and module it lacks, and how to ship it."""
    import importlib
    import pickle
    import subprocess

    monkeypatch.setenv(registry.AUTOLOAD_SWITCH, "1")  # the module is registered by hand, not as an entry point
    module = importlib.import_module("my_criterion_plugin")
    registry.register_plugin(module, name="my-random")
    shipped = registry.shipped_plugins()
    assert [(p.name, p.module) for p in shipped] == [("my-random", "my_criterion_plugin")]
    copy = Path(shipped[0].source)
    assert registry.plugin_sources() == [str(copy)] and copy.name == "my_criterion_plugin.py"
    (tmp_path / "shipped.pkl").write_bytes(pickle.dumps(shipped))
    os.unlink(module.__file__)  # the worker never needs the driver's file
    child = (
        "import pickle, sys; from pat_ray.plugins import registry;"
        "registry.install_shipped(pickle.load(open(sys.argv[1], 'rb')));"
        "print(registry.get_registry().get('criterion', 'random').plugin)"
    )
    env = {**os.environ, registry.AUTOLOAD_SWITCH: "1"}  # so only the shipped module can provide it

    def worker(path: str) -> subprocess.CompletedProcess:
        env["PYTHONPATH"] = os.pathsep.join([path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)])
        command = [sys.executable, "-c", child, str(tmp_path / "shipped.pkl")]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd="/")

    done = worker(str(copy.parent))  # what py_modules does on a node
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "my-random"
    missing = worker(str(tmp_path))
    assert missing.returncode != 0
    assert "plugin 'my-random': module 'my_criterion_plugin' is not importable on this Ray worker" in missing.stderr


def test_an_unregistered_plugin_is_not_shipped(fresh_registry):
    class Observer:
        @pat_ray.hookimpl
        def pat_ray_on_epoch_end(self, epoch, metrics):
            pass

    observer = Observer()
    registry.register_plugin(observer, name="observer")
    assert [(p.name, p.instance) for p in registry.shipped_plugins()] == [("observer", observer)]
    registry.get_plugin_manager().unregister(observer)
    assert registry.shipped_plugins() == []


def test_a_notebook_cell_run_again_can_forget_its_plugin_and_register_it_anew(fresh_registry):
    from pat_ray.sdk import register_plugin, unregister_plugins

    class Mine:
        @pat_ray.hookimpl
        def pat_ray_register_similarity_metrics(self, register):
            register("always-one", lambda a, b: 1.0)

    register_plugin(Mine(), name="mine")
    with pytest.raises(PluginError, match="mine"):
        register_plugin(Mine(), name="mine")  # the cell run again
    unregister_plugins()
    assert "always-one" not in registry.get_registry().names("similarity")
    assert registry.shipped_plugins() == []
    register_plugin(Mine(), name="mine")
    assert "always-one" in registry.get_registry().names("similarity")


def test_cli_lists_every_kind(fresh_registry):
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["kind", "name", "plugin", "distribution"]
    kinds = {line.split()[0] for line in lines[1:]}
    assert {"criterion", "surgery", "model"} <= kinds


def test_every_registered_metric_and_backend_meets_its_contract():
    from pat_ray.core.contracts import SimilarityMetric, SurgeryBackend
    from pat_ray.core.criterion import Criterion

    reg = registry.get_registry()
    for name in reg.names("similarity"):
        assert isinstance(reg.get("similarity", name).factory(), SimilarityMetric), name
    for name in reg.names("surgery"):
        assert isinstance(reg.get("surgery", name).factory(), SurgeryBackend), name
    for name in reg.names("criterion"):
        assert isinstance(reg.get("criterion", name).factory(), Criterion), name


def test_the_shipped_torchvision_model_list_is_torchvisions_own():
    """``pat-ray plugins`` lists torchvision's models from a shipped list (importing torchvision
    would be nearly all of its time); stale for the installed torchvision, the names would be
    asked of torchvision at every start."""
    from pat_ray.plugins.builtin import torchvision_names as tv

    shipped_version, names = tv.shipped_names()
    assert shipped_version == tv.installed_version(), (
        "the shipped list is for another torchvision: python -m pat_ray.plugins.builtin.torchvision_names"
    )
    assert names == tv.listed_by_torchvision()


def test_a_factory_named_by_import_path_is_imported_only_when_used(fresh_registry, tmp_path, monkeypatch):
    (tmp_path / "lazy_criterion_impl.py").write_text(
        textwrap.dedent("""
        import torch
        from pat_ray.core.criterion import Criterion

        class Ones(Criterion):
            def __init__(self, scale: float = 1.0):
                self.scale = scale

            def scores(self, model, graph):
                return {g.name: torch.full((g.size,), self.scale) for g in graph.prunable}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    class Lazy:
        @pat_ray.hookimpl
        def pat_ray_register_criteria(self, register):
            register("ones", "lazy_criterion_impl:Ones")
            register("missing", "lazy_criterion_impl:Nothing")

    registry.register_plugin(Lazy(), name="lazy")
    reg = registry.get_registry()
    assert {"ones", "missing"} <= set(reg.names("criterion"))
    assert "lazy_criterion_impl" not in sys.modules  # listed, not imported
    with pytest.raises(ValueError, match="does not take these params.*accepts: scale"):
        reg.check_params("criterion", "ones", {"scal": 2.0})  # the signature is the class's own
    assert reg.create("criterion", "ones", scale=2.0).scale == 2.0
    with pytest.raises(PluginError, match="criterion 'missing' from plugin 'lazy'.*lazy_criterion_impl:Nothing"):
        reg.create("criterion", "missing")
    sys.modules.pop("lazy_criterion_impl", None)


def test_a_malformed_import_path_is_named_when_used(fresh_registry):
    class Typo:
        @pat_ray.hookimpl
        def pat_ray_register_surgery_backends(self, register):
            register("dotted", "some.module.Backend")  # a dot where the colon goes

    registry.register_plugin(Typo(), name="typo")
    with pytest.raises(PluginError, match="surgery 'dotted' from plugin 'typo'.*'package.module:attribute'"):
        registry.get_registry().create("surgery", "dotted")
