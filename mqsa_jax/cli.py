"""The ``mqsa-jax`` command line: thin argparse subcommands over the library."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import warnings

from mqsa_jax import commands
from mqsa_jax.data.importers import FORMATS
from mqsa_jax.errors import UserError
from mqsa_jax.quiet import logger_level

PROG = "mqsa-jax"


class _Parser(argparse.ArgumentParser):
    """Reports usage mistakes in one line, exit code 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="user data directory (default: $MQSA_DATA_DIR or ~/.local/share/mqsa-jax)",
    )


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", choices=["best", "latest"], default="best",
                        help="which checkpoint of the run (default: best)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="MQSA-TED sequential recommendation in JAX.")
    subcommands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = subcommands.add_parser("data", help="list, inspect, import and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)

    p = data_commands.add_parser("list", help="names of the built-in and imported datasets")
    _add_data_dir(p)
    p.set_defaults(run=commands.data_list)

    p = data_commands.add_parser("info", help="statistics of a dataset, as one JSON object")
    p.add_argument("name")
    _add_data_dir(p)
    p.set_defaults(run=commands.data_info)

    p = data_commands.add_parser("import", help="turn an interaction log into a dataset")
    p.add_argument("path")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="csv (tsv with a .tsv name), sasrec, recbole or parquet")
    p.add_argument("--name", required=True, help="dataset name (lower-case letters, digits, _)")
    p.add_argument("--min-count", type=int, default=5, help="k of the k-core filter (default 5)")
    p.add_argument("--user-col", default="user_id", help="csv/recbole/parquet user column")
    p.add_argument("--item-col", default="item_id", help="csv/recbole/parquet item column")
    p.add_argument("--time-col", default="timestamp", help="csv/recbole/parquet time column")
    p.add_argument("--delimiter", help="csv field delimiter (default: tab for .tsv, else comma)")
    p.add_argument("--encoding", default="utf-8",
                   help="the file's text encoding, e.g. latin-1 or cp1252 (default utf-8)")
    p.add_argument("--split", choices=["leave-one-out", "temporal"], default="leave-one-out",
                   help="leave-one-out (each user's last two events; the default, the paper's) "
                        "or temporal (train before --cutoff, targets after it)")
    p.add_argument("--cutoff", help="the temporal split's time: in the log's unit, a share of its "
                                    "time range (80%%), or an ISO date (2014-06-01, UTC)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing dataset")
    _add_data_dir(p)
    p.set_defaults(run=commands.data_import)

    p = data_commands.add_parser("export", help="write a dataset as SASRec-style 'user item' text")
    p.add_argument("name")
    p.add_argument("path")
    _add_data_dir(p)
    p.set_defaults(run=commands.data_export)

    p = data_commands.add_parser(
        "convert-release", help="rebuild the committed datasets from the authors' release files"
    )
    p.add_argument("release_dir")
    p.add_argument("--out", help="output folder (default: the package's built-in folder)")
    p.set_defaults(run=commands.data_convert_release)
    p = subcommands.add_parser("train", help="train and evaluate a model; writes a run directory")
    p.add_argument("--dataset", help="dataset name (built-in or imported)")
    p.add_argument("--config", help="config file defining get_config(); FILE:ARG passes ARG")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the config's)")
    p.add_argument("--run-dir", help="output directory (default: runs/<dataset>-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set lambda_kd=0 --set windows=1,4")
    p.add_argument("--mesh", metavar="data=N,model=M",
                   help="device mesh: batch split over data, item table over model (default 1x1)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue this run from its latest complete checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="warm start: first weights from this run's checkpoint, item by item "
                        "where the catalogue changed (the model config must match)")
    p.add_argument("--checkpoint", choices=["best", "latest"],
                   help="which checkpoint of --init-from (default: best)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_dir(p)
    p.set_defaults(run=commands.train)

    p = subcommands.add_parser("tune", help="search hyperparameters on validation (Optuna)")
    p.add_argument("--dataset", help="dataset name (built-in or imported)")
    p.add_argument("--config", help="the base config file; FILE:ARG passes ARG")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config value")
    p.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                   help="a searched field: NAME=LOW:HIGH, NAME=log:LOW:HIGH or NAME=A,B,C")
    p.add_argument("--space", help="a file of --param entries, one a line")
    p.add_argument("--trials", type=int, required=True,
                   help="finished trials the study should hold (complete or pruned)")
    p.add_argument("--study-dir", required=True,
                   help="the trials' run directories, the summary, best_config.py, study.db")
    p.add_argument("--storage", help="a database URL for the study instead of study.db "
                                     "(several machines may share it)")
    p.add_argument("--study-name", default="mqsa-jax", help="the study's name in the database")
    p.add_argument("--epochs", type=int, help="each trial's epochs (default: the config's)")
    _add_data_dir(p)
    p.set_defaults(run=commands.tune)

    p = subcommands.add_parser("evaluate", help="metrics of a run's checkpoint, as one JSON object")
    p.add_argument("run_dir")
    _add_checkpoint(p)
    p.add_argument("--split", choices=["valid", "test"], help="one split (default: both)")
    p.add_argument("--ranks", metavar="FILE",
                   help="also write each user's rank of its held-out item (JSON lines)")
    _add_data_dir(p)
    p.set_defaults(run=commands.evaluate)

    p = subcommands.add_parser("recommend", help="top-k items for histories or dataset users")
    p.add_argument("run_dir")
    p.add_argument("--history", help="comma-separated item ids, oldest first")
    p.add_argument("--user", help="a user id of the dataset")
    p.add_argument("--full-history", action="store_true",
                   help="with --user: from the whole history, its last item included (default: "
                        "the test-time input the evaluation scores)")
    p.add_argument("--input", metavar="FILE",
                   help='JSON lines {"id": ..., "history": [item ids, oldest first]}')
    p.add_argument("--all-users", action="store_true",
                   help="every dataset user, from its whole history")
    p.add_argument("--output", metavar="FILE",
                   help='with --input or --all-users: JSON lines {"id", "items", "scores"}')
    p.add_argument("--batch-size", type=int,
                   help="histories per device call with --input or --all-users (default: the "
                        "run's eval_batch_size, 256 unless its config set another)")
    p.add_argument("--k", type=int, default=10, help="number of items (default 10)")
    p.add_argument("--keep-history", action="store_true",
                   help="allow items of the history in the recommendations")
    p.add_argument("--skip-unknown", action="store_true",
                   help="ignore unknown item ids (listed in the output; with --input, "
                        "counted, and malformed or empty lines skipped) instead of failing")
    _add_checkpoint(p)
    _add_data_dir(p)
    p.set_defaults(run=commands.recommend)

    p = subcommands.add_parser("export", help="item embeddings, a compiled scorer (StableHLO), "
                                           "user vectors")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--k", type=int, default=10, help="the scorer's top-k (default 10)")
    p.add_argument("--user-vectors", action="store_true",
                   help="also each dataset user's state vector (user_vectors.npz)")
    _add_checkpoint(p)
    _add_data_dir(p)
    p.set_defaults(run=commands.export)
    return parser


def _ignore_closed_event_loop(unraisable) -> None:
    """A failed Orbax restore leaves a background callback that reports "Event loop is closed"
    when it fires later; the error line already says what went wrong.  Others are reported."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


def _ignore_unraisable(unraisable) -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    """The ``mqsa-jax`` command run in this process; its exit code.  What it sets for the
    process is undone when it returns (:func:`entry` runs it as the command's own process)."""
    args = build_parser().parse_args(argv)
    hook = sys.unraisablehook
    sys.unraisablehook = _ignore_closed_event_loop
    try:
        return _run(args)
    finally:
        sys.unraisablehook = hook


def _run(args: argparse.Namespace) -> int:
    """The subcommand; its exit code (0; 2 after one line for a user's mistake; 130 when
    interrupted)."""
    try:
        # Orbax and TFDS log through absl at WARNING about what they do on their own (a
        # read-only checkpoint manager, say); a user reads our lines.
        with logger_level("absl", logging.ERROR):
            args.run(args)
    except UserError as e:
        error = e
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    else:
        return 0
    print(f"{PROG}: error: {error}", file=sys.stderr)
    # What the failed operation left behind (an abandoned Orbax write's tasks, reachable from
    # the error's traceback) reports its own exceptions when it is collected: as soon as the
    # error is dropped, or at some later garbage collection.  The line above says what went
    # wrong, so it is collected here, silently.
    sys.unraisablehook = _ignore_unraisable
    with logger_level("asyncio", logging.CRITICAL + 1), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
        del error
        gc.collect()
    return 2


def entry() -> None:
    """The console script: :func:`main`, then the process's exit.

    What a failed operation left behind that is still referenced (by a thread, say) is reported
    as the process ends, after the one line that says what went wrong; the process is ending,
    so from here it is silenced (after success, only the closed event loop's report).
    """
    code = main()
    sys.unraisablehook = _ignore_unraisable if code == 2 else _ignore_closed_event_loop
    if code == 2:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    sys.exit(code)


if __name__ == "__main__":
    entry()
