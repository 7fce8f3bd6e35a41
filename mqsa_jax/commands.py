"""What each ``mqsa-jax`` subcommand does, given its parsed arguments (``mqsa_jax.cli`` parses).

Each imports what it needs when it runs, so that ``mqsa-jax data list`` does not start JAX and
``recommend`` does not load training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from mqsa_jax.errors import UserError

_LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # jax.monitoring: a new shape


def data_list(args) -> None:
    from mqsa_jax.data import registry

    for name in registry.list_datasets(registry.data_dir(args.data_dir)):
        print(name)


def data_info(args) -> None:
    from mqsa_jax.data import registry

    dataset = registry.load_dataset(args.name, registry.data_dir(args.data_dir))
    print(json.dumps(dataset.statistics()))


def data_import(args) -> None:
    from mqsa_jax.data import importers, registry, tfds_dataset
    from mqsa_jax.data.dataset import save_store
    from mqsa_jax.data.from_log import build_dataset

    if (args.split == "temporal") != (args.cutoff is not None):
        raise UserError("--split temporal needs --cutoff TIME, and --cutoff needs "
                        "--split temporal")
    root = registry.data_dir(args.data_dir)
    registry.check_new_name(args.name)
    store = registry.imported_store(args.name, root)
    if store.exists() and not args.replace:
        raise UserError(
            f"dataset {args.name!r} already exists in {root}; pass --replace to overwrite")
    columns = importers.Columns(user=args.user_col, item=args.item_col, time=args.time_col)
    log = importers.read_log(Path(args.path), args.format, columns, args.delimiter, args.encoding)
    dataset, summary = build_dataset(args.name, log, args.min_count, args.cutoff)
    save_store(dataset, store)  # atomic: the store is the commit point
    tfds_dataset.prepare(store, args.name, root / "tfds")
    print(json.dumps(summary))


def data_export(args) -> None:
    from mqsa_jax.data import importers, registry

    dataset = registry.load_dataset(args.name, registry.data_dir(args.data_dir))
    importers.export_sasrec(dataset, Path(args.path))


def data_convert_release(args) -> None:
    from mqsa_jax.data import registry, release

    out = Path(args.out or registry.BUILTIN_DIR)
    for dataset in release.convert_release(Path(args.release_dir), out):
        print(json.dumps(dataset.statistics()))


def train(args) -> None:
    from mqsa_jax.config import resolve
    from mqsa_jax.partitioning import Partitioner, parse_mesh
    from mqsa_jax.processes import maybe_initialize_distributed, peers_watched

    maybe_initialize_distributed()  # before anything touches the devices
    from mqsa_jax.train import train as train_run

    resume = Path(args.resume) if args.resume else None
    if args.init_from and resume:
        raise UserError("--init-from starts a new run; --resume continues one (whose weights "
                        "came from where they came from): give one of them")
    if args.checkpoint and not args.init_from:
        raise UserError("--checkpoint chooses the checkpoint of --init-from; give --init-from")
    warm = [f"init_from={Path(args.init_from).resolve()}",
            f"init_checkpoint={args.checkpoint or 'best'}"] if args.init_from else []
    config = resolve(args.config, [*args.set, *warm], resume=resume, dataset=args.dataset,
                     epochs=args.epochs)
    if resume is None:
        run_dir = Path(args.run_dir or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    elif args.run_dir and Path(args.run_dir) != resume:
        raise UserError("--resume names the run directory; do not also give --run-dir")
    else:
        run_dir = resume
    partitioner = Partitioner(*parse_mesh(args.mesh), rules=config.train.logical_axis_rules)
    with peers_watched(run_dir):
        results = train_run(config, run_dir, args.data_dir,
                            progress=False if args.no_progress else None,
                            resume=resume is not None, partitioner=partitioner)
    print(json.dumps(results))


def tune(args) -> None:
    from mqsa_jax.config import resolve
    from mqsa_jax.search_space import search_space

    if args.trials < 1:
        raise UserError(f"--trials {args.trials}: expected a positive number")
    base = resolve(args.config, args.set, dataset=args.dataset, epochs=args.epochs)
    space = search_space(args.param, Path(args.space) if args.space else None, base.flat())
    from mqsa_jax.tune import tune as run_study  # Optuna and JAX only once the space holds

    summary = run_study(base, space, args.trials, Path(args.study_dir), args.storage,
                        args.study_name, args.data_dir)
    print(json.dumps({"study": summary["study"], "best": summary["best"],
                      "trials": len(summary["trials"]), "summary": f"{args.study_dir}/summary.md"}))


def evaluate(args) -> None:
    from mqsa_jax.runs import evaluate_run

    splits = (args.split,) if args.split else ("valid", "test")
    print(json.dumps(evaluate_run(Path(args.run_dir), args.checkpoint, splits, args.data_dir,
                                  Path(args.ranks) if args.ranks else None)))


def recommend(args) -> None:
    from mqsa_jax import recommend as serving

    sources = [args.history is not None, args.user is not None, args.input is not None,
               args.all_users]
    if sum(sources) != 1:
        raise UserError("give exactly one of --history ID,ID,..., --user ID, --input FILE and "
                        "--all-users")
    if (args.input is not None or args.all_users) != (args.output is not None):
        raise UserError("--output FILE goes with --input or --all-users, and only with them")
    if args.full_history and args.user is None:
        raise UserError("--full-history goes with --user")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected a positive integer")
    recommender = serving.Recommender.load(Path(args.run_dir), args.checkpoint, args.data_dir)
    recommender.check_k(args.k)
    exclude = not args.keep_history
    if args.input is not None or args.all_users:
        import jax

        # How many shapes the stream compiled: one, unless a history outgrew the dataset's.
        compiled = []

        def count_lowerings(event, *_, **__):
            if event == _LOWERING:
                compiled.append(event)

        jax.monitoring.register_event_duration_secs_listener(count_lowerings)
        start = time.perf_counter()
        try:
            with tqdm(unit="line" if args.input else "user", disable=None) as bar:
                if args.input is not None:
                    summary = serving.recommend_file(recommender, Path(args.input),
                                                     Path(args.output), args.k, exclude,
                                                     args.skip_unknown, args.batch_size, bar)
                else:
                    summary = serving.recommend_all_users(recommender, Path(args.output),
                                                          args.k, exclude, args.batch_size, bar)
        finally:
            jax.monitoring.unregister_event_duration_listener(count_lowerings)
        seconds = time.perf_counter() - start
        done = summary.get("written", summary.get("users"))
        print(json.dumps({**summary, "output": args.output, "seconds": round(seconds, 3),
                          "per_second": round(done / seconds, 1),
                          "compiled_shapes": len(compiled)}))
        return
    if args.user is not None:
        items, scores = recommender.topk_for_users([args.user], args.k, exclude,
                                                   args.full_history)
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


def export(args) -> None:
    from mqsa_jax import export as exporting
    from mqsa_jax.recommend import Recommender

    out = Path(args.out_dir)
    recommender = Recommender.load(Path(args.run_dir), args.checkpoint, args.data_dir)
    exporting.export_embeddings(recommender, out, args.checkpoint)
    written = {"item_embeddings": str(out / "item_embeddings.npz"),
               "model_config": str(out / "model_config.json"),
               "scorer": str(exporting.export_scorer(recommender, out, args.k))}
    if args.user_vectors:
        written["user_vectors"] = str(exporting.export_user_vectors(recommender, out))
    print(json.dumps(written))
