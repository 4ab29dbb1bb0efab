"""The boards' secrets as the controller reads them: one for all or one per board, from a file or the environment,
never weak, never named in an error; and no command line that would put one into Hydra's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import ConfigError, read_secrets
from tests.conftest import run_cli

A, B = "a" * 16 + "-board-a", "b" * 16 + "-board-b"


def test_one_secret_in_a_file_serves_every_board(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"{A}\n")
    assert read_secrets(str(path), ["device", "server"]) == {"device": A, "server": A}


def test_a_file_of_lines_gives_each_board_its_own_secret(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(f"# boards\nserver = {B}\n*={A}\n")
    assert read_secrets(str(path), ["device", "server"]) == {"device": A, "server": B}


def test_a_secret_that_holds_an_equals_sign_is_still_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("c2VjcmV0LXdpdGgtcGFkZGluZw==\n")  # base64, as some secret stores write them
    assert read_secrets(str(path), ["server"]) == {"server": "c2VjcmV0LXdpdGgtcGFkZGluZw=="}


def test_the_environment_gives_one_board_its_own_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITBENCH_TOKEN", A)
    monkeypatch.setenv("SPLITBENCH_TOKEN_ES1", B)
    assert read_secrets(None, ["es0", "es1"]) == {"es0": A, "es1": B}


@pytest.mark.parametrize("secret, problem", [("short", "5 bytes; at least 16"), ("   ", "only whitespace")])
def test_a_weak_secret_is_refused_naming_the_board_not_the_secret(monkeypatch: pytest.MonkeyPatch, secret: str,
                                                                  problem: str) -> None:
    monkeypatch.setenv("SPLITBENCH_TOKEN", A)
    monkeypatch.setenv("SPLITBENCH_TOKEN_SERVER", secret)
    with pytest.raises(ConfigError) as err:
        read_secrets(None, ["device", "server"])
    assert "board 'server'" in str(err.value) and problem in str(err.value) and "token_hex(32)" in str(err.value)
    assert secret.strip() == "" or secret not in str(err.value)


def test_a_board_without_a_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(f"device={A}\n")
    with pytest.raises(ConfigError, match="board 'server'"):
        read_secrets(str(path), ["device", "server"])
    path.write_text(f"device={A}\nserevr={B}\n")  # a typo: not silently a secret of its own
    with pytest.raises(ConfigError, match="one line per board: ENDPOINT=SECRET"):
        read_secrets(str(path), ["device", "server"])


@pytest.mark.parametrize("override", ["+hydra.job.env_set.SPLITBENCH_TOKEN=" + A,
                                      "hydra.job.env_set={SPLITBENCH_TOKEN_SERVER: " + A + "}",
                                      "+runtime.secret=" + A])
def test_a_secret_on_the_command_line_is_refused_before_hydra_writes_anything(override: str, tracking_uri: str,
                                                                               tmp_path: Path) -> None:
    proc = run_cli(["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", "method=server_only",
                    override], tracking_uri, tmp_path)
    assert proc.returncode != 0
    assert "is not accepted: a secret given as config is recorded" in proc.stderr
    assert A not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
