"""The click CLI: help texts, a tiny training run, data commands, clear errors."""

from click.testing import CliRunner

from mtl.cli import main


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "data"):
        assert command in result.output
    train_help = CliRunner().invoke(main, ["train", "--help"])
    assert train_help.exit_code == 0
    for option in ("--config", "--resume", "--epochs", "--set", "--backbone"):
        assert option in train_help.output


def test_tiny_train_run_prints_where_outputs_went(tmp_path):
    args = [
        "train", "--quiet", "--name", "cli", "--runs-dir", str(tmp_path), "--epochs", "1",
        "--image-size", "64", "--batch-size", "8", "--seed", "1",
        "--set", "data.sources=[{format: phantoms, options: {n: 30, size: 64}}]",
        "--set", "model.decoder_filters=[16,16,8,8,8]", "--set", "train.steps_per_epoch=2",
        "--set", "train.val_steps=1",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "cli"
    assert f"results: {run_dir}" in result.output
    assert (run_dir / "best.keras").is_file() and (run_dir / "plots" / "curves.png").is_file()
    assert "epochs: 1" in (run_dir / "config.yaml").read_text()
    # what the training code logs at INFO reaches the terminal (it used to be hidden)
    again = CliRunner().invoke(main, ["train", "--quiet", "--resume", str(run_dir)],
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert f"run {run_dir} already finished (1 epochs" in again.output


def test_the_command_line_shows_infos_and_labels_warnings(capsys):
    import logging

    from mtl.cli import show_messages

    show_messages()
    show_messages()  # twice: still one handler
    logging.getLogger("mtl.train").info("weights from %s", "a/best.keras")
    logging.getLogger("mtl.data.copies").warning("2 groups")
    try:
        raise OSError("disk full")
    except OSError:
        logging.getLogger("mtl.infer.core").warning("case x failed", exc_info=True)
    err = capsys.readouterr().err
    assert err.count("weights from a/best.keras\n") == 1
    assert "warning: 2 groups\n" in err
    assert "warning: case x failed\nTraceback" in err and "OSError: disk full" in err


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["train", "--set", "train.epoch=3"])
    assert result.exit_code != 0
    assert "unknown key" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "none.yaml")])
    assert missing.exit_code != 0 and "not found" in missing.output
    bad_data = CliRunner().invoke(main, ["train", "--runs-dir", str(tmp_path), "--set",
                                         f"data.sources=[{{format: br35h, root: {tmp_path / 'nope'}}}]"])
    assert bad_data.exit_code != 0 and "not found" in bad_data.output


def test_data_list_and_inspect(tmp_path):
    listing = CliRunner().invoke(main, ["data", "list"])
    assert listing.exit_code == 0
    for name in ("figshare", "br35h", "brats", "phantoms"):
        assert name in listing.output
    out = tmp_path / "mosaic.png"
    inspect = CliRunner().invoke(main, ["data", "inspect", "phantoms", "--option", "n=12",
                                        "--option", "size=64", "--out", str(out), "-n", "4"])
    assert inspect.exit_code == 0, inspect.output
    assert out.is_file() and out.stat().st_size > 1000
    assert "glioma" in inspect.output


def test_resume_needs_a_run_folder(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert result.exit_code != 0 and "config.yaml" in result.output
