"""One atomic-write primitive (mtl.files) and the run folder that owns its files (mtl.runfolder):
issue 16, item 3. Run folders written before RunFolder existed must still read and resume."""

from __future__ import annotations

import json
import shutil

import pytest

from mtl.checkpoint import recover
from mtl.files import OutputExistsError, atomic_write, is_temporary, write_text
from mtl.runfolder import RunFolder, read_history


def test_an_atomic_write_replaces_whole_files_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"

    def torn(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn, force=True)
    assert path.read_text() == "two"  # the old file stays whole
    with pytest.raises(OutputExistsError, match="exists"):
        write_text(path, "three", force=False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_recovery_removes_temporary_files_of_old_and_new_names(tmp_path):
    """Temporary files a kill left: today's ``.tmp-<hex>-<name>`` and the names older mtl
    versions used (``<name>.tmp``, ``<stem>.tmp.keras``, ``<stem>.card.tmp.keras``)."""
    left = [".tmp-0123456789ab-state.json", ".tmp-ba9876543210-last.keras", "state.json.tmp",
            "history.csv.tmp", "last.tmp.keras", "best.card.tmp.keras"]
    for name in left:
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "state.json").write_text("{}")
    assert all(is_temporary(name) for name in left) and not is_temporary("state.json")
    note = recover(tmp_path)
    assert all(name in note for name in left), note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_run_folders_are_named_and_never_reused(tmp_path):
    first, second = RunFolder.create(tmp_path, "run"), RunFolder.create(tmp_path, "run")
    assert (first.path.name, second.path.name) == ("run", "run2")
    second.write_json("state.json", {"epoch": 1, "best": None})
    assert (second / "state.json").read_text() == '{\n "epoch": 1,\n "best": null\n}'
    assert second.read_state() == {"epoch": 1, "best": None}
    assert first.read_state() == {"epoch": 0, "best": None} and first.read_splits() is None


def test_one_json_writer_for_run_folders_and_outputs(tmp_path):
    """The run folder's JSON and mtl.files.write_json have one format (indent, NumPy values);
    the run folder replaces its files and writes no final newline, write_json keeps both."""
    import numpy as np

    from mtl.files import json_text, write_json

    obj = {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2)}
    folder = RunFolder(tmp_path)
    folder.write_json("m.json", obj)
    folder.write_json("m.json", obj)
    write_json(tmp_path / "o.json", obj)
    with pytest.raises(OutputExistsError):
        write_json(tmp_path / "o.json", obj)
    text = '{\n "n": 3,\n "x": 0.5,\n "a": [\n  0,\n  1\n ]\n}'
    assert (tmp_path / "m.json").read_text() == json_text(obj) == text
    assert (tmp_path / "o.json").read_text() == json_text(obj) + "\n"


@pytest.mark.parametrize("damage", [b'{"_near_copies": {', b"\xff\xfe\x00", b"[1, 2]"])
def test_a_damaged_data_summary_is_a_resume_error_naming_it(tmp_path, damage):
    from mtl.runfolder import ResumeError

    folder = RunFolder(tmp_path)
    assert folder.read_data_summary() is None
    (tmp_path / "data_summary.json").write_bytes(damage)
    with pytest.raises(ResumeError, match="data_summary.json: cannot resume, the file is damaged"):
        folder.read_data_summary()
    folder.write_json("data_summary.json", {"_near_copies": {"split_groups": 2}})
    assert folder.read_data_summary() == {"_near_copies": {"split_groups": 2}}


def test_an_old_run_folder_reads_and_resumes(tiny_phantom_run, tmp_path, caplog):
    """A run folder in the shapes mtl wrote before RunFolder (state.json without the commit
    fields, a 0-based history.csv, splits.json as train wrote it, temporary files of the old
    names left by a kill) is read by RunFolder, resumes (here: is found finished, after the
    recovery) and gives evaluate its saved split."""
    from mtl.config import load_config
    from mtl.data.pipeline import open_source
    from mtl.evaluate.evaluation import _saved_splits, assign_eval_split
    from mtl.train import resume_config, train

    run_dir = tmp_path / "old"
    shutil.copytree(tiny_phantom_run.run_dir, run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    old_state = {k: state[k] for k in ("epoch", "best", "best_epoch", "monitor", "mode",
                                       "epochs_planned", "stopped_early")}
    (run_dir / "state.json").write_text(json.dumps(old_state, indent=1))
    rows = read_history(run_dir / "history.csv")
    lines = (run_dir / "history.csv").read_text().splitlines()
    zero_based = [lines[0]] + [str(int(line.split(",", 1)[0]) - 1) + "," + line.split(",", 1)[1]
                               for line in lines[1:]]
    (run_dir / "history.csv").write_text("\n".join(zero_based) + "\n")
    for name in ("state.json.tmp", "last.tmp.keras", "best.card.tmp.keras"):
        (run_dir / name).write_bytes(b"half")
    splits = json.loads((run_dir / "splits.json").read_text())
    assert set(splits["phantoms"]) == {"format", "root", "patients", "case_ids"}

    folder = RunFolder(run_dir)
    assert folder.read_state() == old_state
    assert folder.history() == rows and folder.checked_history() == rows
    assert folder.read_splits() == splits == _saved_splits(run_dir)

    caplog.set_level("INFO", logger="mtl")
    result = train(resume_config(run_dir, ["train.epochs=2"]), run_dir=run_dir, resume=True,
                   verbose=0)
    assert (result.run_dir, result.epochs_done, result.best_epoch) == (
        run_dir, 2, old_state["best_epoch"])
    assert result.history == rows
    assert "already finished" in caplog.text and "removed unfinished temporary" in caplog.text
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]

    config = load_config(run_dir / "config.yaml")
    source = open_source(config.data.sources[0], "raise", config.data.classes, 0)
    assert assign_eval_split(source, "test", _saved_splits(run_dir), config) == \
        "the run's saved split"
    assert [source.records[i].case_id for i in source.splits["test"]] == \
        splits["phantoms"]["case_ids"]["test"]
