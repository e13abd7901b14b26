"""The ``medsum`` command: argument parsing only; every command calls into the modules that do the work."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import warnings
from pathlib import Path

from medsum.errors import MedsumError
from medsum.preemption import Preempted

EXAMPLES_TRAIN = """\
preemption: SIGTERM (a SLURM preemption, a Kubernetes eviction) or SIGINT (Ctrl-C) ends the optimizer step under
  way (and a validation due at it), writes a checkpoint to RUN_DIR/checkpoints/step-N/ and exits with 128 + the
  signal's number: 143 after SIGTERM, 130 after SIGINT. The same command resumes from that checkpoint to the same
  result as an uninterrupted run. Exit codes: 0 done, 1 internal error, 2 bad input, 143/130 stopped by a signal.

examples:
  medsum train configs/lora.yaml
  medsum train model.name=tiny data.path=../shared/data/sumpubmed method.name=prompt_tuning seed=3 output_dir=runs/pt-s3
  medsum train configs/lora.yaml method.target_modules=[q,k,v,o] train.learning_rate=1e-4
"""


def _config_reference() -> str:
    from medsum.config import help_lines

    lines = ["config keys (key=value overrides; values parsed as YAML; default in brackets):"]
    for key, default, text in help_lines():
        wrapped = textwrap.wrap(f"{text} [{default}]", width=88)
        lines.append(f"  {key}")
        lines += [f"      {line}" for line in wrapped]
    return "\n".join(lines)


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """The optional YAML file comes first; everything else is key=value."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    stray = [item for item in items if "=" not in item]
    if stray:
        raise MedsumError(f"expected key=value overrides after the config file, got {stray[0]!r}")
    return None, items


def _method_labels() -> str:
    from medsum.methods import METHODS

    labels = [method.label for method in METHODS.values()]
    return ", ".join(labels[:-1]) + f" or {labels[-1]}" if len(labels) > 1 else labels[0]


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help=f"train one run ({_method_labels()}) into a run directory",
        description="Train, select on validation ROUGE-1, test with beam search and write one run directory. "
                    "Rerunning the same command resumes an unfinished run from its newest checkpoint.",
        epilog=EXAMPLES_TRAIN + "\n" + _config_reference(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="optional YAML config, then overrides")
    p.add_argument("--force", action="store_true", help="retrain even if output_dir holds a finished run")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes to launch (Accelerate/torchrun)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_params(sub) -> None:
    p = sub.add_parser(
        "params", help="count base and trainable parameters of a model + method, without loading weights",
        description="Builds the model on PyTorch's meta device (no download, no memory), applies the method and "
                    "prints base, trainable and total parameters.",
        epilog="example:\n  medsum params model.name=google/flan-t5-large method.name=lora --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_methods(sub) -> None:
    sub.add_parser("methods", help="list the adaptation methods: what trains, their settings and defaults",
                   description="Every adaptation method medsum offers (method.name=...), what it trains, its "
                               "settings (method.KEY=VALUE) with their defaults, its default learning rate and its "
                               "source, and the model families the test matrix trains it on.")


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="run, inspect and report a whole comparison (models x methods x seeds)")
    study = p.add_subparsers(dest="study_command", required=True, metavar="{run,status,report}")
    run = study.add_parser("run", help="run every unfinished run of a study, then write its report",
                           description="Runs every run of STUDY.yaml not yet finished into DIR/runs/<run>/, then "
                                       "writes DIR/report/. Rerunning resumes; finished runs are never retrained.")
    run.add_argument("spec", metavar="STUDY.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    run.add_argument("--output", required=True, metavar="DIR")
    run.add_argument("--executor", choices=("local", "ray"), default="local")
    run.add_argument("--ray-address", default=None, metavar="ADDR", help="an existing Ray cluster (default: local)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    status = study.add_parser("status", help="list the runs of a study as done / running / failed / pending")
    status.add_argument("output", metavar="DIR")
    report = study.add_parser("report", help="rebuild DIR/report/ from the run directories")
    report.add_argument("output", metavar="DIR")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the offline demo study on the tiny model (a few minutes on a laptop CPU)",
                       description="A small built-in study on the randomly initialised tiny model: all three "
                                   "methods, 2 seeds, short LoRA-rank and prompt-token sweeps, and the full report. "
                                   "Its numbers show the machinery, not the paper's conclusion.")
    p.add_argument("--data", default="../shared/data/sumpubmed", help="a local data directory or file")
    p.add_argument("--output", default="runs/demo", metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_use(sub) -> None:
    p = sub.add_parser("summarize", help="summarise text files (or stdin) with a trained run")
    p.add_argument("files", nargs="*", metavar="FILE", help="text files; - or none reads stdin")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help='one {"file", "summary"} JSON line per input')
    p.add_argument("--batch-size", type=int, default=8)
    p = sub.add_parser("export", help="write a self-contained model directory from a run (optionally merged)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--merge", action="store_true", help="merge LoRA weights into the base model (no peft needed)")
    p = sub.add_parser(
        "serve", help="serve a trained run over HTTP (FastAPI)",
        description="Serves RUN_DIR's summariser over HTTP: POST /summarize, GET /health, the OpenAPI page at "
                    "/docs and its schema at /openapi.json (which states every rule and status). Requests arriving "
                    "together share one generate() call. Details: docs/serving.md.",
        epilog="example:\n  medsum serve --run runs/tiny-lora --port 9000 --max-texts 32",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run directory (holding metrics.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; there is no authentication)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: 8000; 0: any free one)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, metavar="N",
                   help="refuse request bodies larger than N bytes with 413, before holding them (default: 1000000)")
    p.add_argument("--max-texts", type=int, default=16, metavar="N",
                   help='at most N texts in one request\'s "texts" (default: 16)')
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="at most N texts wait for generation; a request beyond that is answered 503 with "
                        "Retry-After (default: 256; at least --max-texts)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="recompute the per-example measures of finished runs (no retraining)",
        description="Recomputes each run's measures (length, novel n-grams, coverage, unsupported numbers, "
                    "readability; BERTScore and NLI faithfulness where a local model is given) from its "
                    "predictions.jsonl and its test data, and rewrites predictions.jsonl and metrics.json with "
                    "them; ROUGE and the predictions stay as they are.",
        epilog="example:\n  medsum evaluate runs/demo/runs/*", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--bertscore-model", metavar="DIR", default=None,
                   help="a local model directory for BERTScore (else the run's evaluate.bertscore_model)")
    p.add_argument("--nli-model", metavar="DIR", default=None,
                   help="a local NLI model directory for faithfulness (else the run's evaluate.nli_model)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsum", description="Adapt seq2seq models to medical summarization and compare the methods.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_params(sub)
    _add_methods(sub)
    _add_study(sub)
    _add_demo(sub)
    _add_use(sub)
    _add_evaluate(sub)
    return parser


# ---------------------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from medsum import rundir
    from medsum.config import load_run_config
    from medsum.train import run

    path, overrides = _split_config_and_overrides(args.items)
    cfg = load_run_config(path, overrides)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from medsum.train import check_inputs

        check_inputs(cfg, show_progress=not args.quiet)
        return _launch_processes(args.nproc, args.items, args)
    if rundir.is_finished(cfg.run_dir) and not args.force:
        print(f"run already finished: {cfg.run_dir / rundir.METRICS} (nothing to do; --force retrains)")
        return 0
    run(cfg, force=args.force, show_progress=not args.quiet)
    return 0


def _launch_processes(nproc: int, items: list[str], args) -> int:
    """Re-runs this command under torchrun with ``nproc`` processes (gloo on CPU, NCCL on GPUs). SIGTERM sent to
    this process is passed on (torchrun hands it to every process, which checkpoint and stop together); SIGINT
    (Ctrl-C) reaches them from the terminal already."""
    import signal
    import subprocess

    from medsum.preemption import exit_code

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "medsum"] + (["--debug"] if args.debug else []) + ["train", *items]
    if args.force:
        command.append("--force")
    if args.quiet:
        command.append("--quiet")
    child = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    received: list[int] = []

    def note(signum, frame) -> None:
        if not received:
            received.append(signum)
            if signum == signal.SIGTERM:
                child.send_signal(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return exit_code(received[0]) if received and code != 0 else code


def cmd_params(args) -> int:
    import json

    from medsum.accounting import count_for_config
    from medsum.config import load_run_config

    path, overrides = _split_config_and_overrides(args.items)
    report = count_for_config(load_run_config(path, overrides))
    if args.json:
        print(json.dumps(report))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{report['model']} + {report['method']}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key in ("base_params", "trainable_params", "total_params"):
            table.add_row(key.replace("_", " "), f"{report[key]:,}")
        table.add_row("trainable %", f"{report['trainable_pct']:.4f}")
        Console().print(table)
    return 0


def cmd_methods(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from medsum.methods.catalog import COLUMNS, catalog_rows

    table = Table(title="adaptation methods (method.name=...)", show_lines=True)
    for column in COLUMNS:
        table.add_column(column, no_wrap=column == "method", overflow="fold")
    for row in catalog_rows():
        table.add_row(*row)
    Console().print(table)
    return 0


def cmd_study(args) -> int:
    from medsum import study

    if args.study_command == "run":
        study.run_study(Path(args.spec), Path(args.output), list(args.overrides), executor=args.executor,
                        ray_address=args.ray_address, show_progress=not args.quiet)
    elif args.study_command == "status":
        print(study.status_table(Path(args.output)))
    else:
        from medsum.report import write_report

        print(f"report written to {write_report(Path(args.output))}")
    return 0


def cmd_demo(args) -> int:
    from medsum.study.demo import run_demo

    run_demo(Path(args.data), Path(args.output), show_progress=not args.quiet)
    return 0


def cmd_summarize(args) -> int:
    from medsum.serve import summarize_command

    return summarize_command(args.run, args.files, as_json=args.json, batch_size=args.batch_size)


def cmd_export(args) -> int:
    from medsum.serve import export_run

    print(export_run(Path(args.run), Path(args.output), merge=args.merge))
    return 0


def cmd_serve(args) -> int:
    from medsum.serve import serve

    serve(args.run, host=args.host, port=args.port, max_body_bytes=args.max_body_bytes, max_texts=args.max_texts,
          max_queue=args.max_queue)
    return 0


def cmd_evaluate(args) -> int:
    from medsum.rescore import rescore_run

    settings = {"bertscore_model": args.bertscore_model, "nli_model": args.nli_model}
    for run in args.runs:
        means = rescore_run(Path(run), settings)
        shown = {k: means[k] for k in ("words", "novel_2gram_rate", "coverage", "unsupported_numbers")}
        print(f"{run}: " + "  ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in shown.items()))
    return 0


COMMANDS = {"train": cmd_train, "params": cmd_params, "methods": cmd_methods, "study": cmd_study, "demo": cmd_demo,
            "summarize": cmd_summarize, "export": cmd_export, "serve": cmd_serve,
            "evaluate": cmd_evaluate}


def _offline_when_hub_unreachable() -> None:
    """Without a route to the model hub, go offline before huggingface_hub is imported: otherwise every hub name
    costs tens of seconds of connection retries before the shipped Flan-T5 facts (or a clear error) are used."""
    if "HF_HUB_OFFLINE" in os.environ:
        return
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    _offline_when_hub_unreachable()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options (`medsum train --force a=1 b=2`): gather the stragglers
    bucket = "items" if hasattr(args, "items") else "overrides" if hasattr(args, "overrides") else None
    if extra and bucket and all("=" in item and not item.startswith("-") for item in extra):
        getattr(args, bucket).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return COMMANDS[args.command](args)
    except Preempted as stopped:
        if os.environ.get("RANK", "0") == "0":
            print(f"medsum: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except MedsumError as err:
        if args.debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # one message, not one per process
            print(f"medsum: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsum: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: still one line unless --debug
        if args.debug:
            raise
        print(f"medsum: internal error: {type(err).__name__}: {' '.join(str(err).split())[:300]} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
