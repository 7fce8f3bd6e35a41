"""The ``mqsa-jax`` command line: thin argparse subcommands over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mqsa_jax.errors import UserError

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


def _data_list(args) -> None:
    from mqsa_jax.data import registry

    for name in registry.list_datasets(registry.data_dir(args.data_dir)):
        print(name)


def _data_info(args) -> None:
    from mqsa_jax.data import registry

    dataset = registry.load_dataset(args.name, registry.data_dir(args.data_dir))
    print(json.dumps(dataset.statistics()))


def _data_import(args) -> None:
    from mqsa_jax.data import importers, registry, tfds_dataset
    from mqsa_jax.data.dataset import save_store
    from mqsa_jax.data.from_log import build_dataset

    root = registry.data_dir(args.data_dir)
    registry.check_new_name(args.name)
    store = registry.imported_store(args.name, root)
    if store.exists() and not args.replace:
        raise UserError(
            f"dataset {args.name!r} already exists in {root}; pass --replace to overwrite")
    columns = importers.Columns(user=args.user_col, item=args.item_col, time=args.time_col)
    log = importers.read_log(Path(args.path), args.format, columns, args.delimiter, args.encoding)
    dataset, summary = build_dataset(args.name, log, args.min_count)
    save_store(dataset, store)  # atomic: the store is the commit point
    tfds_dataset.prepare(store, args.name, root / "tfds")
    print(json.dumps(summary))


def _data_export(args) -> None:
    from mqsa_jax.data import importers, registry

    dataset = registry.load_dataset(args.name, registry.data_dir(args.data_dir))
    importers.export_sasrec(dataset, Path(args.path))


def _data_convert_release(args) -> None:
    from mqsa_jax.data import registry, release

    out = Path(args.out or registry.BUILTIN_DIR)
    for dataset in release.convert_release(Path(args.release_dir), out):
        print(json.dumps(dataset.statistics()))


def _train(args) -> None:
    import time

    from mqsa_jax.config import resolve
    from mqsa_jax.partitioning import Partitioner, maybe_initialize_distributed, parse_mesh

    maybe_initialize_distributed()  # before anything touches the devices
    from mqsa_jax.train import train

    resume = Path(args.resume) if args.resume else None
    config = resolve(args.config, args.set, resume=resume, dataset=args.dataset,
                     epochs=args.epochs)
    if resume is None:
        run_dir = Path(args.run_dir or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    elif args.run_dir and Path(args.run_dir) != resume:
        raise UserError("--resume names the run directory; do not also give --run-dir")
    else:
        run_dir = resume
    partitioner = Partitioner(*parse_mesh(args.mesh))
    results = train(config, run_dir, args.data_dir, progress=False if args.no_progress else None,
                    resume=resume is not None, partitioner=partitioner)
    print(json.dumps(results))


def _evaluate(args) -> None:
    from mqsa_jax.runs import evaluate_run

    splits = (args.split,) if args.split else ("valid", "test")
    print(json.dumps(evaluate_run(Path(args.run_dir), args.checkpoint, splits, args.data_dir)))


def _recommend(args) -> None:
    from mqsa_jax.recommend import Recommender

    if (args.history is None) == (args.user is None):
        raise UserError("give exactly one of --history ID,ID,... and --user ID")
    recommender = Recommender.load(Path(args.run_dir), args.checkpoint, args.data_dir)
    exclude = not args.keep_history
    if args.user is not None:
        items, scores = recommender.topk_for_users([args.user], args.k, exclude)
        output = {"user": args.user}
    else:
        ids = [i for i in args.history.split(",") if i.strip()]
        if not ids:
            raise UserError("--history: empty; give at least one item id")
        known, skipped = recommender.item_indices(ids, args.skip_unknown)
        if not known:
            raise UserError("--history: no known item ids left; give at least one")
        items, scores = recommender.topk([known], args.k, exclude)
        output = {"history": [i.strip() for i in ids], "skipped": skipped}
    print(json.dumps({**output, "items": items[0], "scores": scores[0]}))


def _export(args) -> None:
    from mqsa_jax.recommend import export_embeddings

    export_embeddings(Path(args.run_dir), Path(args.out_dir), args.checkpoint, args.data_dir)
    print(json.dumps({"item_embeddings": str(Path(args.out_dir) / "item_embeddings.npz"),
                      "model_config": str(Path(args.out_dir) / "model_config.json")}))


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", choices=["best", "latest"], default="best",
                        help="which checkpoint of the run (default: best)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="MQSA-TED sequential recommendation in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = commands.add_parser("data", help="list, inspect, import and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)

    p = data_commands.add_parser("list", help="names of the built-in and imported datasets")
    _add_data_dir(p)
    p.set_defaults(run=_data_list)

    p = data_commands.add_parser("info", help="statistics of a dataset, as one JSON object")
    p.add_argument("name")
    _add_data_dir(p)
    p.set_defaults(run=_data_info)

    p = data_commands.add_parser("import", help="turn an interaction log into a dataset")
    p.add_argument("path")
    p.add_argument("--format", required=True, choices=["csv", "sasrec", "recbole"])
    p.add_argument("--name", required=True, help="dataset name (lower-case letters, digits, _)")
    p.add_argument("--min-count", type=int, default=5, help="k of the k-core filter (default 5)")
    p.add_argument("--user-col", default="user_id", help="csv/recbole user column")
    p.add_argument("--item-col", default="item_id", help="csv/recbole item column")
    p.add_argument("--time-col", default="timestamp", help="csv/recbole time column")
    p.add_argument("--delimiter", help="csv field delimiter (default: tab for .tsv, else comma)")
    p.add_argument("--encoding", default="utf-8",
                   help="the file's text encoding, e.g. latin-1 or cp1252 (default utf-8)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing dataset")
    _add_data_dir(p)
    p.set_defaults(run=_data_import)

    p = data_commands.add_parser("export", help="write a dataset as SASRec-style 'user item' text")
    p.add_argument("name")
    p.add_argument("path")
    _add_data_dir(p)
    p.set_defaults(run=_data_export)

    p = data_commands.add_parser(
        "convert-release", help="rebuild the committed datasets from the authors' release files"
    )
    p.add_argument("release_dir")
    p.add_argument("--out", help="output folder (default: the package's built-in folder)")
    p.set_defaults(run=_data_convert_release)
    p = commands.add_parser("train", help="train and evaluate a model; writes a run directory")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_dir(p)
    p.set_defaults(run=_train)

    p = commands.add_parser("evaluate", help="metrics of a run's checkpoint, as one JSON object")
    p.add_argument("run_dir")
    _add_checkpoint(p)
    p.add_argument("--split", choices=["valid", "test"], help="one split (default: both)")
    _add_data_dir(p)
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("recommend", help="top-k items for a history or a dataset user")
    p.add_argument("run_dir")
    p.add_argument("--history", help="comma-separated item ids, oldest first")
    p.add_argument("--user", help="a user id of the dataset")
    p.add_argument("--k", type=int, default=10, help="number of items (default 10)")
    p.add_argument("--keep-history", action="store_true",
                   help="allow items of the history in the recommendations")
    p.add_argument("--skip-unknown", action="store_true",
                   help="ignore unknown item ids (listed in the output) instead of failing")
    _add_checkpoint(p)
    _add_data_dir(p)
    p.set_defaults(run=_recommend)

    p = commands.add_parser("export", help="item embeddings (npz) and model config (JSON)")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    _add_checkpoint(p)
    _add_data_dir(p)
    p.set_defaults(run=_export)
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
    args = build_parser().parse_args(argv)
    sys.unraisablehook = _ignore_closed_event_loop
    try:
        args.run(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        # What the failed operation left behind (an abandoned Orbax write's coroutines, say)
        # would otherwise be reported at exit, after the one line that says what went wrong.
        sys.unraisablehook = _ignore_unraisable
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
