"""Every command a user is shown runs as written (``tests/_docs.py`` collects them): each shell and
Python block of the documents, each ``pat-ray`` line of every ``--help``; and the collector
itself fails on a broken example."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import click
import pytest
import yaml

from _docs import (
    RAN,
    ROOT,
    Block,
    blocks,
    command_of,
    documents,
    environment,
    excerpt_lines_missing,
    fresh_folder,
    help_examples,
    installs,
    record_ran,
    run_block,
    run_line,
)
from pat_ray.cli import main
from pat_ray.config import Config, config_from_dict

RUNNABLE = [doc for doc in documents() if any(block.runs_here for block in blocks(doc))]


@pytest.mark.slow  # every documented command, Ray runs included: `pytest -m slow`
@pytest.mark.parametrize("document", RUNNABLE, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_block_of_a_document_runs_as_written_top_to_bottom(document, tmp_path):
    folder = fresh_folder(tmp_path / "reader")
    env = environment(folder)
    ran = []
    for index, block in enumerate(blocks(document)):
        outcome = run_block(block, folder, env, index)
        if outcome is not None:
            assert outcome.ok, outcome.failure()
            record_ran(block)
            print(f"{outcome.seconds:6.1f} s  {block.source}")  # where the time goes (pytest -rP shows it)
            ran.append(outcome)
    assert ran, f"{document.name}: no block ran"
    if document.name == "README.md" and document.parent == ROOT:
        check_the_set_up_block(ran[0].output, folder)


def check_the_set_up_block(output: str, folder: Path) -> None:
    """The README's first block: a run on Ray and one --local, both at their budget, with our
    lines only, then both listed by ``pat-ray runs``."""
    runs = [chunk for chunk in re.split(r"^(?=pat-ray: running)", output, flags=re.M) if "pruning started:" in chunk]
    assert len(runs) == 2, output[-3000:]
    for run in runs:
        assert re.search(r"pruning started:\s+EPI (fired at|did not fire by) epoch", run), run[-2000:]
        assert len([line for line in run.splitlines() if line.startswith("epoch ")]) == Config().training.epochs
        for label in ("final accuracy:", "FLOPs kept:", "training FLOPs:", "wall time:", "mlflow run:"):
            assert label in run, label
    for chatter in ("Reporting training result", "Attempting to start training worker group", "Traceback"):
        assert chatter not in output, chatter
    assert "INFO mlflow" not in output and "Creating initial MLflow database tables" not in output
    assert "dashboard at" in runs[0] and "embedded default" in runs[1]
    versions = sorted(p for p in (folder / "runs" / "digits").iterdir() if not p.is_symlink())
    assert len(versions) >= 2 and (folder / "runs" / "digits" / "latest").resolve() == versions[-1]
    for version in versions[:2]:
        assert json.loads((version / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_every_help_example_runs_as_written_in_one_fresh_folder(tmp_path):
    examples = help_examples(main)
    assert {command for command, _ in examples} >= {"pat-ray --help", "pat-ray run --help", "pat-ray export --help"}
    folder = fresh_folder(tmp_path / "reader")
    env = environment(folder)
    for command, line in examples:
        if command_of(line) in RAN:  # the same command, run by a document's block in this session
            print(f"  ran by {RAN[command_of(line)]}: {line}")
            continue
        outcome = run_line(command, line, folder, env)
        assert outcome.ok, outcome.failure()
        print(f"{outcome.seconds:6.1f} s  {line}")  # where the time goes (pytest -rP shows it)


def test_a_broken_example_fails_the_collector(tmp_path):
    @click.group()
    def tool():
        """\b
        pat-ray validate pipelines/digits.yaml
        """

    @tool.command()
    def broken():
        """\b
        pat-ray validate pipelines/no-such-pipeline.yaml
        """

    examples = help_examples(tool)
    assert [line for _, line in examples] == [
        "pat-ray validate pipelines/digits.yaml",
        "pat-ray validate pipelines/no-such-pipeline.yaml",
    ]
    folder = fresh_folder(tmp_path / "reader")
    env = environment(folder)
    good, bad = (run_line(command, line, folder, env) for command, line in examples)
    assert good.ok and not bad.ok and "no-such-pipeline.yaml" in bad.failure()
    document = tmp_path / "doc.md"
    document.write_text("```python\nraise SystemExit('a broken example')\n```\n")
    (python,) = blocks(document)
    assert not run_block(python, folder, env, 0).ok


def test_only_blocks_marked_for_a_cluster_or_gpu_are_left_out(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text(
        "<!-- doc-test: cluster -->\n```bash\nray up x\n```\n\n<!-- doc-test: slow -->\n```bash\nx\n```\n"
    )
    with pytest.raises(ValueError, match="unknown doc-test marker 'slow'"):
        blocks(document)
    document.write_text("<!-- doc-test: gpu -->\n```bash\nnvidia-smi\n```\n```python\nprint(1)\n```\n")
    marked, plain = blocks(document)
    assert marked.marker == "gpu" and not marked.runs_here and plain.runs_here


def test_every_excerpt_quotes_its_file_line_for_line():
    excerpts = [b for doc in documents() for b in blocks(doc) if b.marker == "excerpt"]
    assert len(excerpts) >= 2, "CONTRIBUTING.md's worked examples quote their families"
    for block in excerpts:
        assert not excerpt_lines_missing(block), (block.source, excerpt_lines_missing(block))


def test_an_excerpt_that_drifted_from_its_file_is_caught(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text(
        "<!-- doc-test: excerpt -->\n```python\n# pat_ray/tracer/layers/bilinear.py\n"
        "@layer_family(nn.Bilinear)\nclass Bilinear(LayerFamily):\n    counts_macs = True  # explained here\n"
        "    # a comment line of the document's own\n    tensor_inputs = 3\n```\n"
    )
    (block,) = blocks(document)
    assert not block.runs_here and excerpt_lines_missing(block) == ["    tensor_inputs = 3"]


def test_a_block_naming_a_file_is_written_there_for_the_blocks_after_it(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text(
        textwrap.dedent(
            """\
            ```toml
            # pkg/settings.toml
            value = 3
            ```
            ```bash
            grep -q 'value = 3' pkg/settings.toml
            ```
            """
        )
    )
    folder = fresh_folder(tmp_path / "reader")
    env = environment(folder)
    written, check = blocks(document)
    assert written.file == "pkg/settings.toml" and run_block(written, folder, env, 0) is None
    assert run_block(check, folder, env, 1).ok


def test_the_install_lines_are_what_ci_installs():
    (set_up, *_) = blocks(ROOT / "README.md")
    lines = [line for line in set_up.text.splitlines() if line.strip()]
    assert lines[0].startswith("python3 -m venv .venv")
    ci = (ROOT / ".ci" / "run").read_text()
    (ci_install,) = [line for line in ci.splitlines() if "pip install" in line and not line.startswith("#")]
    assert installs(lines[1]) == installs(ci_install) != []
    shown = next(b for b in blocks(ROOT / "README.md") if "pytest" in b.text)
    commands = [line.split("#")[0].strip() for line in shown.text.splitlines() if line.strip()]
    assert commands == ["pytest", "pytest -m slow"]
    assert [line.strip() for line in ci.splitlines() if line.startswith("pytest")] == commands


def test_every_config_shown_in_yaml_is_valid():
    shown = [b for doc in documents() for b in blocks(doc) if b.language in ("yaml", "yml") and b.marker is None]
    configs = [(b, yaml.safe_load(b.text)) for b in shown]
    configs = [(b, data) for b, data in configs if isinstance(data, dict) and set(data) <= set(Config.model_fields)]
    assert configs, "no config block found in the documents"
    for block, data in configs:
        config_from_dict(data, block.source)


def test_blocks_are_found_with_where_they_start():
    readme = blocks(ROOT / "README.md")
    assert isinstance(readme[0], Block) and readme[0].source.startswith("README.md:") and readme[0].language == "shell"
    assert any(b.marker == "cluster" for b in readme), "the cluster walkthrough must be marked, not run"
