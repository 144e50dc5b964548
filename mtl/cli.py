"""The ``mtl`` command line: the group and its verbs. Each verb lives next to its code
(``mtl/train_command.py``, ``mtl/evaluate/command.py``, ``mtl/data/command.py``,
``mtl/infer/command.py``, ``mtl/serve/command.py``)."""

from __future__ import annotations

import logging
import os

import click

from mtl.quiet import quiet_tensorflow

# quieter TensorFlow start-up unless the user asked otherwise (TF_CPP_MIN_LOG_LEVEL, no cuInit
# error on machines without an NVIDIA GPU); before anything imports TF
quiet_tensorflow()
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mtl")
def main() -> None:
    """mtl: one network for brain MRI tumor presence, type and mask."""
    show_messages()


class _Console(logging.Handler):
    """Writes the ``mtl.*`` loggers' messages to the terminal's stderr, looked up at each
    message (so click's test runner and redirections see them): INFO as the bare message
    ("weights from runs/a/best.keras ..."), WARNING and above prefixed with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            click.echo(text, err=True)
        except Exception:  # a message must never end the command
            self.handleError(record)


def show_messages(level: int = logging.INFO) -> None:
    """Make the command line show what mtl logs at ``level`` and above (a library user keeps
    Python's default: warnings only, through their own logging set-up). Idempotent."""
    logger = logging.getLogger("mtl")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
    logger.setLevel(level)


# each verb lives next to its code; their heavy imports happen inside the commands
from mtl.data.command import data  # noqa: E402
from mtl.evaluate.command import evaluate  # noqa: E402
from mtl.infer.command import infer  # noqa: E402
from mtl.serve.command import serve  # noqa: E402
from mtl.train_command import train  # noqa: E402

main.add_command(train)
main.add_command(evaluate)
main.add_command(data)
main.add_command(infer)
main.add_command(serve)


if __name__ == "__main__":  # pragma: no cover
    main()
