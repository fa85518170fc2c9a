"""`multiref --help` and every command's help: order, flags, metavars, --version; and the one-line
error of every model-side command when torch or transformers are not installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.cli import COMMAND_PANELS, build_command

ROOT = Path(__file__).resolve().parents[1]
PYTHON_TYPE = re.compile(r"<(str|int|float|bool|path|Path|list\[[^\]]*\]|datetime)>")


def _help(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("TERM", "dumb")
    with pytest.raises(SystemExit) as done:
        build_command()(args=[*args, "--help"], prog_name="multiref")
    assert done.value.code in (0, None)
    return capsys.readouterr().out


def _command_paths(command, prefix=()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


def _multiref(*args: str, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    code = prelude + "import sys; from app.cli import main; sys.argv = ['multiref', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", **(env or {})},
    )


def test_top_level_help_lists_commands_in_the_order_people_use_them(capsys, monkeypatch):
    out = _help(capsys, monkeypatch)
    positions = {name: out.find(f" {name} ") for names in COMMAND_PANELS.values() for name in names}
    assert all(p > 0 for p in positions.values()), positions
    first_steps = ["serve", "bot", "worker", "deploy", "export", "import", "retrospect", "train", "report"]
    assert [positions[n] for n in first_steps] == sorted(positions[n] for n in first_steps), out
    for heading in COMMAND_PANELS:
        assert heading in out
    assert "╭─ Commands" not in out, "every command belongs under a heading of COMMAND_PANELS"
    assert "--version" in out


def test_no_help_shows_python_types_placeholders_or_values_on_flags(capsys, monkeypatch):
    paths = _command_paths(build_command())
    assert len(paths) > 20
    for path in paths:
        out = _help(capsys, monkeypatch, *path)
        assert not PYTHON_TYPE.search(out), (path, PYTHON_TYPE.search(out).group(0), out)
        usage = next(line for line in out.splitlines() if "Usage:" in line)
        assert "{" not in usage, (path, usage)
        help_line = next(line for line in out.splitlines() if "--help" in line)
        assert re.search(r"--help\s+Show this message", help_line), (path, help_line)


def test_flags_show_as_flags_and_values_show_a_metavar(capsys, monkeypatch):
    serve = _help(capsys, monkeypatch, "serve")
    assert re.search(r"--with-worker\s+Also run a policy worker", serve), serve
    assert re.search(r"--port\s+INTEGER\s+Port", serve), serve
    tiny = _help(capsys, monkeypatch, "model", "tiny")
    assert "Usage: multiref model tiny [OPTIONS] DIR" in tiny, tiny
    export = _help(capsys, monkeypatch, "export")
    assert re.search(r"--round\s+INTEGER\s+Only these rounds", export), export
    assert re.search(r"--incomplete\s+Include games", export), export


def test_version():
    done = _multiref("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"multiref {__version__}"


# A python in which torch and transformers cannot be imported, as after `make serve` alone.
BLOCK_MODEL_SIDE = """
import importlib.abc, sys
class _NoModelSide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoModelSide())
"""


@pytest.mark.parametrize(
    "args",
    [
        ["model", "tiny", "{tmp}/tiny"],
        ["worker", "--database-url", "sqlite+aiosqlite:///{tmp}/db.sqlite3"],
        ["serve", "--with-worker", "--database-url", "sqlite+aiosqlite:///{tmp}/db.sqlite3"],
        ["train", "--system", "B-SUP", "--round", "0", "--out", "{tmp}/adapter",
         "--database-url", "sqlite+aiosqlite:///{tmp}/db.sqlite3"],
        ["retrospect", "--round", "0", "--database-url", "sqlite+aiosqlite:///{tmp}/db.sqlite3"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_model_side_commands_say_in_one_line_what_to_install(args, tmp_path):
    done = _multiref(*[a.format(tmp=tmp_path) for a in args], prelude=BLOCK_MODEL_SIDE)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert len(lines) == 1, done.stderr
    assert "make model" in lines[0] and ("torch" in lines[0] or "transformers" in lines[0]), lines[0]
    assert not (tmp_path / "db.sqlite3").exists() or args[0] in ("train", "retrospect")


OUTSIDE = re.compile(r"\.\./shared|MULTIREF\.md|shared/reference|§\s?\d")


def test_docs_and_help_mention_no_file_outside_the_repository(capsys, monkeypatch):
    texts = {p: p.read_text(encoding="utf-8") for p in [
        ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "bench" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "templates").rglob("*.html")),
    ]}
    for path in _command_paths(build_command()):
        texts[" ".join(("multiref", *path, "--help"))] = _help(capsys, monkeypatch, *path)
    for where, text in texts.items():
        assert not OUTSIDE.search(text), (str(where), OUTSIDE.search(text).group(0))
    # every relative link of the Markdown pages names a file of the repository
    for where, text in texts.items():
        if not str(where).endswith(".md"):
            continue
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (Path(where).parent / target).exists(), (str(where), target)
    assert {"game.md", "method.md"} <= {p.name for p in (ROOT / "docs").glob("*.md")}
