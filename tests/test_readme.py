"""The README's two commands are the ones users and CI run."""
import re

from conftest import ROOT


def readme_commands():
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_two_setup_commands_first():
    cmds = readme_commands()
    assert cmds[0].endswith("jlcm-gguf demo")
    assert cmds[1].endswith("python -m pytest -q")
    for c in cmds[:2]:
        assert c.startswith("pip install torch==2.13.0 ")  # the CPU wheel, never a CUDA build


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = readme_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines
