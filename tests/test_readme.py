"""The README stays true: two set-up commands, CI runs the second verbatim, every flag documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_setup_commands_and_ci_runs_the_second():
    cmds = _setup_commands()
    assert len(cmds) == 2, cmds
    assert "examples/quickstart.sh" in cmds[0] and re.search(r"\[test[],]", cmds[1]) and "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci.splitlines(), "the CI script must run the README's test command verbatim"


def test_command_reference_matches_the_cli():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_flag_of_every_command_is_in_the_readme():
    import typer

    from srdistill.cli import app

    text = (ROOT / "README.md").read_text()
    group = typer.main.get_command(app)
    missing = [f"{name} {opt}" for name, cmd in group.commands.items() for p in cmd.params
               for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
               if opt.startswith("--") and f"`{opt}`" not in text]
    assert not missing, missing


def test_readme_states_the_install_size_caveat_and_the_measured_quickstart_time():
    text = (ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text  # the CPU-only alternative
    assert re.search(r"quickstart itself \(after the install\) took \d+ min \d+ s on a quiet 2-core", text)
    assert "CPU-friendly (2 min 7 s" in (ROOT / "examples" / "quickstart.sh").read_text()


def test_version_is_the_one_the_changelog_describes():
    from srdistill import __version__

    top = re.search(r"^## \[[^\]]*\] — ([0-9][^\s]*)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert top and top.group(1) == __version__
    assert f'version = "{__version__}"' in (ROOT / "pyproject.toml").read_text()
