"""`python -m job` and the `job` console script: train, evaluate, report, compare, predict, serve, tune, status,
export-data, presets, config, relay."""
from __future__ import annotations

import argparse
import logging
import sys

from job.cliargs import OneLineParser, non_negative_float, port_number, positive_float, positive_int
from job.errors import EXIT_CRASH, UserError, first_line
from job.relay import TARGETS as RELAY_TARGETS

log = logging.getLogger("job")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m job",
                                     description="Train, resume and evaluate CIFAR-10/100 classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train (running the same command again resumes)")
    train.add_argument("--config", default="cifar100_resnet18", help="preset name or YAML path")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=10")

    evaluate = sub.add_parser("evaluate", help="evaluate a run's checkpoint on the test set")
    add_weights_arguments(evaluate, files=False)
    add_tta_argument(evaluate, None)

    report = sub.add_parser("report", help="make a run's eval/report.html again (also made at the end of training)")
    add_weights_arguments(report, files=False)
    add_tta_argument(report, None)

    export = sub.add_parser("export", help="write a run's export/ again from the chosen checkpoint (also written at "
                                           "the end of training)")
    add_weights_arguments(export, files=False)

    compare = sub.add_parser("compare", help="runs side by side: a table, and compare.html with their curves and "
                                             "per-class F1 (reads the runs only; no TensorFlow)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (local paths or gs://)")
    compare.add_argument("--out", default="compare.html", help="where the page goes (a path, directory or gs://)")

    predict = sub.add_parser("predict", help="classify image files, folders or gs:// objects with a run's model")
    add_weights_arguments(predict)
    add_tta_argument(predict, "off")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="an image file, a folder (its images, recursively), or a gs:// object or prefix")
    predict.add_argument("--top", type=positive_int, default=5, help="how many classes to show per image (default 5)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    predict.add_argument("--explain", metavar="DIR", default="",
                         help="write a Grad-CAM overlay per image into DIR (what the model looked at)")
    predict.add_argument("--max-pixels", type=positive_int, default=None,
                         help="refuse images with more pixels than this (default 40,000,000)")

    serve = sub.add_parser("serve", help="a web page and an HTTP API that classify uploaded images")
    add_weights_arguments(serve)
    add_tta_argument(serve, "off")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default loopback; 0.0.0.0 in a container)")
    serve.add_argument("--port", type=port_number, default=8080, help="port (default 8080)")
    serve.add_argument("--max-request-mb", type=positive_float, default=None, metavar="MB",
                       help="largest request body (default 32, or JOB_SERVE_MAX_REQUEST_MB); larger gets 413")
    serve.add_argument("--max-files", type=positive_int, default=None, metavar="N",
                       help="most files per request (default 64, or JOB_SERVE_MAX_FILES); more gets 413")
    serve.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                       help="most pixels per image, from its header before decoding (default 40,000,000, or "
                            "JOB_SERVE_MAX_PIXELS); more gets 413")
    serve.add_argument("--max-batch-size", type=positive_int, default=None, metavar="N",
                       help="most images per model call when concurrent requests are batched (default 32, or "
                            "JOB_SERVE_MAX_BATCH_SIZE)")
    serve.add_argument("--max-batch-wait-ms", type=non_negative_float, default=None, metavar="MS",
                       help="how long a request may wait for others to share its model call (default 2, or "
                            "JOB_SERVE_MAX_BATCH_WAIT_MS); 0 turns batching off")
    serve.add_argument("--model-name", default=None, metavar="NAME",
                       help="the model's name in /v2/models/NAME (default the architecture, e.g. resnet20, or "
                            "JOB_SERVE_MODEL_NAME)")
    serve.add_argument("--public-metrics", action="store_true",
                       help="serve /metrics without the bearer token (for a scraper that has none; or "
                            "JOB_SERVE_PUBLIC_METRICS=1)")

    from job.tune.registry import describe as tune_choices

    tune = sub.add_parser("tune", help="hyperparameter search (Optuna): trials are ordinary runs in the study dir",
                          epilog=tune_choices(), formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("--config", default="", help="the base config: preset name or YAML path (required to start)")
    tune.add_argument("--space", required=True, help="the search space YAML (see docs/tuning.md)")
    tune.add_argument("--study-dir", default="", help="where the trial runs and results go (local or gs://; "
                                                      "default runs/tune-<study>)")
    tune.add_argument("--storage", default="", help="the study database URL, e.g. postgresql+psycopg://user@host/db "
                                                    "(default: $JOB_TUNE_STORAGE, else SQLite in the study dir)")
    tune.add_argument("--workers", type=positive_int, default=1,
                      help="trial workers to run on this machine (default 1)")
    tune.add_argument("--summary", action="store_true", help="print the leaderboard and write best.yaml and "
                                                             "report.html now; train nothing")
    tune.add_argument("--no-results", action="store_true", help=argparse.SUPPRESS)  # the workers of --workers K
    tune.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config for every trial")

    export_data = sub.add_parser("export-data", help="write a built-in dataset (digits, cifar10, cifar100) as PNG "
                                                     "class folders for data.name=folder, its train/test split kept "
                                                     "(no TensorFlow)")
    export_data.add_argument("dataset", choices=("digits", "cifar10", "cifar100"), help="the dataset to write")
    export_data.add_argument("out", metavar="OUT", help="a new or empty folder, or gs:// prefix")
    export_data.add_argument("--data-dir", default="data", help="where the CIFAR archives are (default data)")
    export_data.add_argument("--no-download", action="store_true", help="do not download a missing CIFAR archive")

    sub.add_parser("presets", help="list the bundled presets")

    relay = sub.add_parser("relay", help="run a command and pass a pod's SIGTERM on to the trainers it starts "
                                         "(MPIJob launcher and workers; see job/relay.py)")
    relay.add_argument("--to", required=True, choices=RELAY_TARGETS,
                       help="descendants: SIGTERM to every `python -m job` below the command (workers running sshd); "
                            "child-as-usr1: SIGUSR1 to the command (mpirun, which passes it on to every rank)")
    relay.add_argument("relayed", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    status = sub.add_parser("status", help="where a run is: phase, step, ETA, checkpoint, starts, metrics, log "
                                           "(reads the run only; no TensorFlow)")
    status.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (local path or gs://)")
    status.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    status.add_argument("--json", action="store_true", help="one JSON object (per refresh) for scripts")
    status.add_argument("--interval", type=positive_float, default=5.0, help="seconds between refreshes with --watch")
    status.add_argument("--stale-after", type=positive_float, default=None, metavar="SECONDS",
                        help="call a running run's heartbeat lost after this long (default: 3 flush intervals, "
                             "at least 10 s)")

    show = sub.add_parser("config", help="print the effective config of a preset with overrides")
    show.add_argument("--config", default="cifar100_resnet18", help="preset name or YAML path")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def add_weights_arguments(parser: argparse.ArgumentParser, files: bool = True) -> None:
    """The weights a command uses (job/weights.py): a run's checkpoint, or (with `files`) an exported model file."""
    from job.weights import DEFAULT

    run_help = "the run directory (local path or gs://)"
    if files:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--run-dir", help=run_help + ": its checkpoint is used")
        source.add_argument("--model", help="an exported model file (a run's export/model.keras or model.h5)")
    else:
        parser.add_argument("--run-dir", required=True, help=run_help)
    parser.add_argument("--checkpoint", default=DEFAULT, metavar="latest|best|PREFIX",
                        help="with --run-dir: the newest committed checkpoint (default), the best by validation "
                             "top-1, or a checkpoint prefix (RUN/checkpoints/ckpt-1200-1a2b3c4d)")
    parser.add_argument("--trained-weights", action="store_true",
                        help="with --run-dir of a run that averages its weights (train.ema_decay): the trained "
                             "weights, not their average (the default)")


def add_tta_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--tta: test-time augmentation around the model (job/tta.py); None: the run's train.tta."""
    from job.tta import MODES, VIEWS

    cost = ", ".join(f"{m} {VIEWS[m]}x" for m in MODES)
    default_text = "the run's train.tta" if default is None else default
    parser.add_argument("--tta", choices=MODES, default=default,
                        help=f"test-time augmentation, averaged logits ({cost} the compute; default {default_text})")


def selection(args: argparse.Namespace):
    """The weights the arguments of add_weights_arguments name."""
    from job.weights import Selection

    return Selection(run_dir=args.run_dir, checkpoint=args.checkpoint, model_file=getattr(args, "model", None),
                     trained=args.trained_weights)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return _dispatch(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - peer loss gets its own exit code so Kubernetes retries the job
        from job.distribute.errors import is_peer_lost_error
        from job.errors import EXIT_PEER_LOST

        if is_peer_lost_error(e):
            print(f"error: lost contact with another worker ({type(e).__name__}: {first_line(e)}); "
                  "restart the job to resume from the last checkpoint", file=sys.stderr)
            return EXIT_PEER_LOST
        log.exception("training crashed")
        return EXIT_CRASH


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "urllib3", "google", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _dispatch(args: argparse.Namespace) -> int:
    from job import config as configlib

    if args.command == "presets":
        presets = configlib.list_presets()
        width = max(map(len, presets))
        for name, description in presets.items():
            print(f"{name:<{width}}  {description}")
        return 0
    if args.command == "config":
        print(configlib.to_yaml(configlib.load_config(args.config, args.overrides)), end="")
        return 0
    if args.command == "train":
        cfg = configlib.load_config(args.config, args.overrides)
        from job.preflight import check_training_start

        splits = check_training_start(cfg)  # before TensorFlow is imported: a bad start is one line
        from job.train import train

        return train(cfg, splits=splits)
    if args.command == "export-data":
        from job.data.to_folder import export_dataset

        export_dataset(args.dataset, args.out, args.data_dir, download=not args.no_download)
        return 0
    if args.command == "relay":
        from job.relay import relay

        command = relayed_command(args)
        if not command:
            raise UserError("relay needs a command after --, e.g. python -m job relay --to descendants -- sshd -D")
        return relay(command, args.to)
    if args.command == "status":
        from job.status import main as status

        return status(args.run_dir, watch=args.watch, as_json=args.json, interval=args.interval,
                      stale_after=args.stale_after)
    if args.command in ("report", "compare"):
        from job.report import commands

        if args.command == "report":
            return commands.report(selection(args), args.tta)
        return commands.compare(args.run_dirs, args.out)
    if args.command == "predict":
        from job.predict import main as predict

        return predict(args, selection(args))
    if args.command == "serve":
        from job.serve import main as serve

        return serve(args, selection(args))
    if args.command == "tune":
        from job.tune import main as tune

        return tune(args)
    if args.command in ("evaluate", "export"):
        from job.weights import check

        check(selection(args))  # before TensorFlow is imported: a bad choice is one line
        if args.command == "export":
            from job.export import export_run

            export_run(selection(args))
            return 0
        from job.evaluate import evaluate_run

        evaluate_run(selection(args), args.tta)
        return 0
    raise AssertionError(args.command)


def relayed_command(args: argparse.Namespace) -> list[str]:
    """The command after `python -m job relay --to X [--]`."""
    return args.relayed[1:] if args.relayed[:1] == ["--"] else args.relayed
