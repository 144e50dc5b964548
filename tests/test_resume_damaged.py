"""Resuming from a damaged run folder gives one line that names the file (issue 15, item 10)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from mtl.cli import main


@pytest.fixture(scope="module")
def finished_run(tiny_phantom_run):
    """The suite's shared 2-epoch run (conftest.py); each test damages its own copy."""
    return tiny_phantom_run.run_dir


DAMAGE = {
    "state.json": b'{"epoch": 1, "be',
    "history.csv": b"epoch,loss\n1,0.5\n\x00\x00garbage,,\n",
    "last.keras": b"PK\x03\x04 this is not a whole zip file",
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_resume_from_a_damaged_file_names_it_in_one_line(finished_run, tmp_path, name):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / name).write_bytes(DAMAGE[name])
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--epochs", "3", "-q"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or \
        isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"{run_dir / name}: cannot resume" in errors[0], result.output


def test_history_rows_out_of_order_are_refused(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    path = run_dir / "history.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace("1,", "7,", 1)]) + "\n")
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--epochs", "3", "-q"])
    assert result.exit_code == 1 and "row 1 is damaged" in result.output, result.output


def test_a_damaged_data_summary_is_named_in_one_line(finished_run, tmp_path):
    """data_summary.json is read on resume for the near-copy counts the run started with
    (other damage: tests/test_runfolder.py)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "data_summary.json").write_bytes(b'{"_near_copies": {"cross')
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--epochs", "3", "-q"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert f"{run_dir / 'data_summary.json'}: cannot resume, the file is damaged" in errors[0]
    assert "Traceback" not in result.output
