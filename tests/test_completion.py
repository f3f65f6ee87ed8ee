"""``landslide-batch completion SHELL``: shtab's script, generated from the parser itself."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from landslide_batch.cli import build_parser, main

BASH = shutil.which("bash")


def _script(capsys, shell: str) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def _commands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(sub.choices)


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_bash_script_is_valid_and_completes_commands_options_and_choices(capsys, tmp_path):
    script = tmp_path / "landslide-batch.bash"
    script.write_text(_script(capsys, "bash"))
    subprocess.run([BASH, "-n", str(script)], check=True)
    listed = next(
        line for line in script.read_text().splitlines() if line.startswith("_shtab_landslide_batch_subparsers=")
    )
    assert set(listed.split("=(", 1)[1].rstrip(")").split()) == set(_commands()) >= {"run", "vectorize", "completion"}

    def complete(*words: str) -> list[str]:
        """What bash offers for the last word of ``landslide-batch WORDS``, through the script's
        completion function, as bash calls it on TAB."""
        line = " ".join(["landslide-batch", *words])
        probe = (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
            '_shtab_landslide_batch; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        return subprocess.run([BASH, "-c", probe], check=True, capture_output=True, text=True).stdout.split()

    assert complete("vec") == ["vectorize"]
    assert complete("run", "--bl") == ["--blend", "--block"]
    assert complete("run", "--blend", "") == ["mean", "cosine", "gaussian"]


def test_zsh_script_names_every_command(capsys):
    script = _script(capsys, "zsh")
    assert script.startswith("#compdef landslide-batch")
    assert all(f"{command}:" in script for command in _commands())


def test_unknown_shell_lists_the_choices(capsys):
    assert main(["completion", "cmd.exe"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'cmd.exe'" in err and "'bash'" in err and "'zsh'" in err
