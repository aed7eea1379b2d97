"""`make` stops with a sentence, not a SyntaxError, when .venv (or PYTHON) is older than the code needs."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def fake_python(path: Path, version: str, new_enough: bool) -> Path:
    """Write a stand-in interpreter that reports a version and answers the Makefile's version check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\ncase "$1" in --version) echo "Python {version}";; -c) exit {0 if new_enough else 1};;'
                    ' *) echo "ran $*"; exit 3;; esac\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the Makefile reads, with an installed-stamp as a finished `make install` leaves."""
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def make(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=project, capture_output=True, text=True,
                          timeout=30, check=False)


def stamp(project: Path) -> None:
    checksum = subprocess.run("cat requirements.txt requirements-dev.txt | cksum", shell=True, cwd=project,
                              capture_output=True, text=True, check=True).stdout.split()[0]
    (project / ".venv" / f".installed-{checksum}").touch()


@pytest.mark.parametrize("target", ["run", "test", "install"])
def test_a_venv_made_by_python_3_10_stops_make_with_what_to_do(project: Path, target: str) -> None:
    fake_python(project / ".venv" / "bin" / "python", "3.10.12", new_enough=False)
    stamp(project)
    result = make(project, target)
    assert result.returncode != 0
    assert ".venv was made by Python 3.10.12" in result.stderr
    assert "needs Python 3.11 or newer" in result.stderr and "rm -rf .venv" in result.stderr
    assert "ran" not in result.stdout  # nothing went on to use the old interpreter


def test_a_venv_whose_python_is_gone_stops_make_too(project: Path) -> None:
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "python").symlink_to(project / "uninstalled-python3.10")
    result = make(project, "run")
    assert result.returncode != 0 and "a Python that is gone" in result.stderr and "rm -rf .venv" in result.stderr


def test_an_old_python_to_make_the_venv_with_is_refused(project: Path) -> None:
    old = fake_python(project / "python3.10", "3.10.12", new_enough=False)
    result = make(project, "install", f"PYTHON={old}")
    assert result.returncode != 0
    assert "is Python 3.10.12" in result.stderr and "make PYTHON=python3.11" in result.stderr
    assert not (project / ".venv").exists()


def test_a_new_enough_venv_passes_the_check(project: Path) -> None:
    fake_python(project / ".venv" / "bin" / "python", "3.11.7", new_enough=True)
    result = make(project, "check-python")
    assert result.returncode == 0, result.stderr


def test_the_check_asks_the_real_interpreter_the_right_question() -> None:
    """The fakes above answer the check's exit code; this runs the check's own code on this Python."""
    result = subprocess.run(["make", "--no-print-directory", "-s", "check-python", "VENV=/nonexistent-venv"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
