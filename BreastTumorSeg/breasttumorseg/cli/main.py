"""The ``breasttumorseg`` command line: segment, batch, demo, phantom, evaluate, train, fit-lesion-scorer,
models, study, serve.

Every command prints one line ``breasttumorseg: error: <file>: <problem>`` and exits
with status 2 for bad input (no traceback, no partial output); warnings go to stderr;
progress bars (tqdm) go to stderr unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..core.errors import BreastTumorSegError, Cancelled
from . import commands as cmd, lesion_scorer_command, reader_study_commands, serve_command

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    try:
        return int(args.run(args) or 0)
    except Cancelled:
        print("breasttumorseg: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("breasttumorseg: interrupted; no output was written", file=sys.stderr)
        return EXIT_CANCELLED
    except BreastTumorSegError as error:
        print(f"breasttumorseg: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # a file-system failure no command turned into its own line (EIO, ENOSPC)
        where = f"{error.filename}: " if error.filename else ""
        print(f"breasttumorseg: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breasttumorseg",
        description="Breast cancer segmentation on dynamic contrast-enhanced (DCE) MRI. "
                    "Research software: the bundled models are trained on a synthetic phantom "
                    "and make no claim of clinical accuracy.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd.add_segment(commands, _common())
    cmd.add_batch(commands, _common())
    cmd.add_demo(commands, _common())
    cmd.add_phantom(commands, _common())
    cmd.add_evaluate(commands, _common())
    cmd.add_train(commands, _common())
    lesion_scorer_command.add_fit_lesion_scorer(commands, _common())
    cmd.add_models(commands, _common())

    reader_study_commands.add_study(commands, _common())

    serve_command.add_serve(commands, _common())
    return parser


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or information messages")
    return common


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("breasttumorseg").setLevel(logging.WARNING if quiet else logging.INFO)


if __name__ == "__main__":
    raise SystemExit(main())
