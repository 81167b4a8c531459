"""Every command a user is shown, collected from where they are shown and run as written.

Collected, not listed by hand, so a new example is tested without anyone remembering to:
- every fenced ``bash`` / ``sh`` / ``shell`` and ``python`` block of README.md, CONTRIBUTING.md,
  docs/ and the plugin distributions' READMEs, each document top to bottom in one fresh folder
  (as a reader following it would); a block whose first line is a comment naming a file
  (``# my-criterion/pyproject.toml``) is also written there, so later blocks find it;
- every ``pat-ray ...`` line of every command's ``--help``, all in one fresh folder, in the
  order of ``HELP_ORDER`` (an export example finds the run a run example made).

Not run: a block marked ``<!-- doc-test: cluster -->`` or ``<!-- doc-test: gpu -->`` on the line
before it (this machine has neither); a block marked ``<!-- doc-test: excerpt -->`` quotes a file
of the repository named in its first line (a worked example's family, which importing pat_ray
registers already): each of its code lines, less a trailing comment, must be a line of that file
(``excerpt_lines_missing``); the install lines CI itself runs before the suite
(``.ci/run``; ``test_the_install_lines_are_what_ci_installs`` checks they are the same) and the
README's test command (this suite). A fresh folder holds links to ``pipelines/``, ``examples/``
and ``plugins/``, as a clone does; ``pip install`` in a document installs into that folder, not
into the suite's environment.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("cluster", "gpu", "excerpt")
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "console": "shell", "python": "python"}
LINKED = ("pipelines", "examples", "plugins")  # what a clone has beside the documents
HELP_ORDER = ("", "run", "runs", "export", "validate", "config", "oracle", "report", "plugins")
TIMEOUT_S = 900
_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARK = re.compile(r"<!--\s*doc-test:\s*([\w-]+)\s*-->\s*$")
_FILE = re.compile(r"^#\s*([\w.-]+(?:/[\w.-]+)*\.(?:py|toml|yaml|yml|cfg|txt))\s*$")


def documents() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *sorted((ROOT / "docs").glob("**/*.md")),
        *sorted((ROOT / "plugins").glob("*/README.md")),
    ]


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    source: str  # "README.md:29", where the fence opens
    language: str  # shell, python, or the fence's own word (toml, yaml, ...)
    text: str
    marker: str | None  # "cluster" / "gpu" / "excerpt": not run here
    file: str | None  # a relative path the block is written to, named in its first line

    @property
    def runs_here(self) -> bool:
        return self.language in ("shell", "python") and self.marker is None


def blocks(document: Path) -> list[Block]:
    text = document.read_text()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        if mark and mark.group(1) not in MARKERS:
            raise ValueError(f"{document.name}:{line}: unknown doc-test marker {mark.group(1)!r}; use {MARKERS}")
        body = match.group(2)
        first = body.splitlines()[0] if body.strip() else ""
        named = _FILE.match(first)
        found.append(
            Block(
                source=f"{document.relative_to(ROOT) if document.is_relative_to(ROOT) else document.name}:{line}",
                language=LANGUAGES.get(match.group(1), match.group(1)),
                text=body,
                marker=mark.group(1) if mark else None,
                file=named.group(1) if named else None,
            )
        )
    return found


def excerpt_lines_missing(block: Block) -> list[str]:
    """The code lines of an ``excerpt`` block that its file (named in its first line, relative
    to the repository) does not hold, whitespace at either end ignored; comments count as code."""
    if block.file is None:
        return [f"{block.source}: an excerpt names the file it quotes in its first line"]
    quoted = ROOT / block.file
    if not quoted.is_file():
        return [f"{block.source}: {block.file} does not exist"]
    held = {_code(line) for line in quoted.read_text().splitlines()}
    return [line for line in block.text.splitlines()[1:] if _code(line) and _code(line) not in held]


def _code(line: str) -> str:
    """A line without its trailing comment (a document may explain a quoted line) and without
    the whitespace at either end; a comment line is no code."""
    code = line.split("  # ", 1)[0].strip()
    return "" if code.startswith("#") else code


def ci_lines() -> set[str]:
    """What ``.ci/run`` runs itself before the suite: the README's set-up lines that install."""
    return {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()}


def installs(line: str) -> list[str]:
    words = shlex.split(line.split("#")[0])
    return [words[i + 1] for i, word in enumerate(words) if word == "-e"]


def _ci_runs(line: str) -> bool:
    """The venv and editable-install lines of the set-up block, and the test command: CI runs them."""
    stripped = line.split("#")[0].strip()
    ci = ci_lines()
    ci_install = next((installs(c) for c in ci if "pip install" in c), None)
    return (
        stripped in ("pytest", "pytest -m slow")
        or stripped.startswith("python3 -m venv .venv")
        or (ci_install is not None and "pip install" in stripped and installs(stripped) == ci_install)
    )


def shell_script(block: Block) -> str:
    kept = [line for line in block.text.splitlines() if not _ci_runs(line)]
    return "set -euo pipefail\n" + "\n".join(kept) + "\n"


def fresh_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    return folder


def environment(folder: Path) -> dict[str, str]:
    """The suite's environment as a new user's shell has it: no tracking store or Ray address of
    the suite's, the virtualenv's commands first, and ``pip install`` going into ``folder``."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    for key in ("PAT_RAY_VERBOSE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTEST_CURRENT_TEST"):
        env.pop(key, None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    site, boot = folder / ".doc-site", folder / ".doc-boot"
    boot.mkdir(exist_ok=True)  # pip's target is read as a site folder, so an editable install's .pth works
    (boot / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(site)!r})\n")
    env.update(PIP_TARGET=str(site), PIP_NO_DEPS="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(boot), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class Ran:
    source: str
    command: str
    returncode: int
    output: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        return (
            f"{self.source} exited {self.returncode}:\n{self.command}\n--- output (last 4000 characters) ---\n"
            + (self.output[-4000:])
        )


def run_block(block: Block, folder: Path, env: dict[str, str], index: int) -> Ran | None:
    """Write a file block where it says; run a shell or Python block in ``folder``."""
    if block.file is not None and block.marker != "excerpt":
        target = folder / block.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text)
    if not block.runs_here:
        return None
    if block.language == "python":
        script = folder / f".doc_block_{index}.py"
        script.write_text(block.text)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-c", shell_script(block)]
    return _run(block.source, command, block.text, folder, env)


def run_line(source: str, line: str, folder: Path, env: dict[str, str]) -> Ran:
    return _run(source, ["bash", "-c", "set -euo pipefail\n" + line], line, folder, env)


def _run(source: str, command: list[str], shown: str, folder: Path, env: dict[str, str]) -> Ran:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return Ran(source, shown, -1, f"{output}\n(timed out after {TIMEOUT_S} s)", TIMEOUT_S)
    return Ran(source, shown, done.returncode, done.stdout + done.stderr, time.perf_counter() - started)


RAN: dict[str, str] = {}  # each `pat-ray ...` command a document's block ran without failing -> that block


def command_of(line: str) -> str:
    """A ``pat-ray ...`` line as the command it runs: without its comment and extra spaces."""
    return " ".join(line.split(" #")[0].split())


def record_ran(block: Block) -> None:
    """Remember the ``pat-ray`` lines of a shell block that ran, so a help example identical to
    one of them is not run a second time in the same session (the block's run showed it works)."""
    if block.language == "shell":
        for line in block.text.splitlines():
            if line.strip().startswith("pat-ray "):
                RAN.setdefault(command_of(line.strip()), block.source)


def help_examples(group: click.Group) -> list[tuple[str, str]]:
    """``(command, line)`` for every ``pat-ray ...`` line in the help of ``group`` and its
    commands, in ``HELP_ORDER`` (then any other command), each line once."""
    names = [name for name in HELP_ORDER if name == "" or name in group.commands]
    names += sorted(set(group.commands) - set(names))
    seen, found = set(), []
    for name in names:
        command = group if name == "" else group.commands[name]
        with click.Context(command, info_name=f"pat-ray {name}".strip()) as ctx:
            text = command.get_help(ctx)
        for line in text.splitlines():
            line = line.strip()
            command = command_of(line)  # the same command with another comment runs once
            if line.startswith("pat-ray ") and command not in seen:
                seen.add(command)
                found.append((f"pat-ray {name} --help".replace("  ", " "), line))
    return found
