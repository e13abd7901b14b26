"""The issue's job done both ways in one process, interleaved: the stock Seq2SeqTrainer recipe and `medsum train`.

Job: LoRA r=16 on q,v of a local flan-t5-small-layout model, 24 steps of batch 4 over 96 training examples,
validation on 16 and 4-beam test generation on 16 examples, source 512 and target 128 tokens, ROUGE. Each side is
timed from loading the model and data to the scored test set; the medsum side is the CLI itself
(``medsum.cli.main(["train", ...])``) with a cold tokenize cache, as a study's first run. Repeats alternate which
side goes first, so that load from other work on a shared machine falls on both.

Then the data-preparation share of a study's second run: reading and tokenizing the same data again with the
tokenize cache warm (what ``medsum.train.setup`` does), against the first run's; ``--second-run`` repeats the whole
medsum run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import common
from stock_recipe import Job, run_stock_recipe


def medsum_overrides(model_dir: Path, data_dir: Path, output_dir: Path, job: Job) -> list[str]:
    return [f"model.name={model_dir}", f"data.path={data_dir}", "method.name=lora", f"method.r={job.lora_r}",
            f"method.alpha={job.lora_alpha}", f"method.dropout={job.lora_dropout}", "method.target_modules=[q,v]",
            f"train.max_steps={job.steps}", f"train.batch_size={job.batch_size}",
            f"train.learning_rate={job.learning_rate}",
            f"data.max_train_examples={job.train_examples}", f"data.max_eval_examples={job.eval_examples}",
            f"data.max_source_tokens={job.max_source_tokens}", f"data.max_target_tokens={job.max_target_tokens}",
            f"generate.num_beams={job.num_beams}", f"generate.length_penalty={job.length_penalty}",
            f"generate.no_repeat_ngram_size={job.no_repeat_ngram_size}",
            f"generate.min_new_tokens={job.min_new_tokens}", f"generate.max_new_tokens={job.max_new_tokens}",
            f"generate.batch_size={job.eval_batch_size}", f"seed={job.seed}", f"output_dir={output_dir}"]


@contextmanager
def medsum_cache(path: Path):
    """Points medsum's cache (tokenized splits) at ``path`` for the block."""
    old = os.environ.get("MEDSUM_CACHE")
    os.environ["MEDSUM_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MEDSUM_CACHE")
        else:
            os.environ["MEDSUM_CACHE"] = old


@contextmanager
def timing_medsum_phases(times: dict):
    """Wraps the functions of medsum's trainer that read/tokenize data, validate and test, to time each phase."""
    import medsum.evaluation as evaluation
    import medsum.train.build as build

    phases = {(build, "load_splits"): "data_seconds", (build, "tokenize"): "data_seconds",
              (evaluation, "validate"): "eval_seconds", (evaluation, "test"): "test_seconds"}
    originals = {where: getattr(*where) for where in phases}

    def wrap(where):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[where](*args, **kwargs)
            finally:
                times[phases[where]] = times.get(phases[where], 0.0) + time.perf_counter() - start
        return timed_call

    for module, name in originals:
        setattr(module, name, wrap((module, name)))
    try:
        yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


def reset_accelerate() -> None:
    """Forgets the process-wide Accelerate state, which the Trainer and medsum each set (and medsum may set to bf16
    mixed precision, which Accelerate refuses to change once set)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def run_medsum(model_dir: Path, data_dir: Path, output_dir: Path, cache: Path, job: Job,
               show_progress: bool = False, extra: tuple[str, ...] = ()) -> dict:
    """`medsum train ...` in this process; returns wall seconds per phase and the test ROUGE-1."""
    from medsum.cli import main as medsum_main

    argv = ["train", *medsum_overrides(model_dir, data_dir, output_dir, job), *extra, "--force"]
    if not show_progress:
        argv.append("--quiet")
    times: dict = {"load": [common.load()], "data_seconds": 0.0, "eval_seconds": 0.0, "test_seconds": 0.0}
    with medsum_cache(cache), timing_medsum_phases(times):
        start, cpu_start = time.perf_counter(), time.process_time()
        code = medsum_main(argv)
        times["wall_seconds"] = time.perf_counter() - start
        times["cpu_seconds"] = time.process_time() - cpu_start
    times["load"] = [f"{times['load'][0]} -> {common.load()}"]
    if code != 0:
        raise SystemExit(f"medsum train failed with exit code {code}: {' '.join(argv)}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    times["predictions"] = [row["prediction"] for row in rows]
    times["test_rouge1"] = metrics["test"]["rouge1"]
    times["train_seconds_in_loop"] = metrics["efficiency"]["train_seconds"]
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    times["train_loss"] = statistics.mean(row["loss"] for row in log if "loss" in row)
    return times


def data_preparation_seconds(model_dir: Path, data_dir: Path, cache: Path, job: Job) -> float:
    """What a run's setup spends reading and tokenizing the splits (``medsum.train.setup``'s data steps)."""
    from medsum.config import load_run_config
    from medsum.data import load_splits, tokenize
    from medsum.models import FAMILIES, cache_dir, load_tokenizer

    cfg = load_run_config(None, medsum_overrides(model_dir, data_dir, cache / "unused", job))
    tokenizer = load_tokenizer(str(model_dir))  # loaded afresh, as a new run does
    with medsum_cache(cache):
        start = time.perf_counter()
        splits = load_splits(cfg.data)
        for examples in splits.values():
            tokenize(examples, tokenizer, FAMILIES["t5"].prefix, cfg.data.max_source_tokens,
                     cfg.data.max_target_tokens, cache=cache_dir() / "tokenized")
        return time.perf_counter() - start


def full_reference_rouge1(data_dir: Path, predictions: list[str]) -> float:
    """Test ROUGE-1 of either side scored the same way (medsum's definition: against the full reference text)."""
    from medsum.evaluate import aggregate, rouge_per_example

    references = [row["abstract"] for row in common.read_rows(data_dir, "test", len(predictions))]
    return aggregate(rouge_per_example(references, predictions))["rouge1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_job_flags(parser, Job)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs; the first side alternates")
    parser.add_argument("--second-run", action="store_true",
                        help="also run medsum a second time on the warm tokenize cache (default: time its data "
                             "preparation alone)")
    parser.add_argument("--medsum-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra `medsum train` overrides, to try other defaults (e.g. train.precision=bf16)")
    common.add_machine_flags(parser)
    args = parser.parse_args()
    common.apply_machine_flags(args)
    job = Job(steps=args.steps, train_examples=args.examples, eval_examples=args.eval_examples)
    model_dir = common.model_dir(args.model, args.data)
    import medsum.train  # noqa: F401  (imports torch, transformers, peft: paid before either clock starts)

    results: list[tuple[str, int, dict]] = []
    with tempfile.TemporaryDirectory(prefix="end-to-end-") as tmp:
        tmp = Path(tmp)
        for repeat in range(args.repeats):
            sides = ("stock", "medsum") if repeat % 2 == 0 else ("medsum", "stock")
            for side in sides:
                reset_accelerate()
                out = tmp / f"{side}-{repeat}"
                print(f"repeat {repeat + 1}/{args.repeats}: {side} ...", flush=True)
                if side == "stock":
                    result = run_stock_recipe(model_dir, args.data, out, job, show_progress=args.progress)
                else:
                    result = run_medsum(model_dir, args.data, out, tmp / f"cache-{repeat}", job, args.progress,
                                        tuple(args.medsum_set))
                result["rouge1_full"] = full_reference_rouge1(args.data, result["predictions"])
                print(f"  {side}: {result['wall_seconds']:.1f} s", flush=True)
                results.append((side, repeat, result))
        first_prep = [r["data_seconds"] for side, _, r in results if side == "medsum"]
        first_wall = [r["wall_seconds"] for side, _, r in results if side == "medsum"]
        if args.second_run:
            reset_accelerate()
            second = run_medsum(model_dir, args.data, tmp / "medsum-second", tmp / "cache-0", job, args.progress,
                                tuple(args.medsum_set))
            second_prep, second_wall = second["data_seconds"], second["wall_seconds"]
        else:
            second_prep, second_wall = data_preparation_seconds(model_dir, args.data, tmp / "cache-0", job), None

    rows = []
    for side, repeat, r in results:
        train = r.get("train_seconds_in_loop", r["wall_seconds"] - r["data_seconds"] - r["eval_seconds"]
                      - r["test_seconds"])
        rows.append([f"{side} #{repeat + 1}", f"{r['wall_seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
                     f"{r['data_seconds']:.1f}",
                     f"{train:.1f}", f"{r['eval_seconds']:.1f}", f"{r['test_seconds']:.1f}",
                     f"{r['train_loss']:.3f}", f"{r['test_rouge1']:.2f}", f"{r['rouge1_full']:.2f}",
                     "; ".join(r["load"])])
    stock = statistics.mean(r["wall_seconds"] for side, _, r in results if side == "stock")
    medsum = statistics.mean(first_wall)
    cpu_ratio = (statistics.mean(r["cpu_seconds"] for side, _, r in results if side == "stock")
                 / statistics.mean(r["cpu_seconds"] for side, _, r in results if side == "medsum"))
    pairs = [next(r for s, k, r in results if s == "stock" and k == i)["wall_seconds"]
             / next(r for s, k, r in results if s == "medsum" and k == i)["wall_seconds"] for i in range(args.repeats)]
    table = common.markdown_table(
        ["run", "wall s", "CPU s", "data prep s", "train s", "validation s", "test s", "mean train loss",
         "test ROUGE-1 (own scoring)",
         "test ROUGE-1 (full references)", "load before -> after"], rows)
    second_line = (f"a whole second run took {second_wall:.1f} s, " if second_wall is not None else "")
    notes = f"""
**Stock / medsum wall time: {stock / medsum:.2f}x** (mean stock {stock:.1f} s, mean medsum {medsum:.1f} s; per
pair: {', '.join(f'{p:.2f}x' for p in pairs)}); in CPU seconds of the process, which other work on the machine
disturbs less: {cpu_ratio:.2f}x.

Data preparation of a study's second run on the same data (tokenize cache warm): {second_prep:.2f} s, against
{statistics.mean(first_prep):.2f} s in the first run ({100 * second_prep / statistics.mean(first_prep):.1f}% of the
first run's data preparation, {100 * second_prep / statistics.mean(first_wall):.2f}% of the first run's wall
time); {second_line}target: under 5%.

Job: {args.model} model, LoRA r={job.lora_r} on q,v, {job.steps} steps of batch {job.batch_size},
{job.train_examples} training, {job.eval_examples} validation and {job.eval_examples} test examples, source
{job.max_source_tokens} / target {job.max_target_tokens} tokens, test generation {job.num_beams} beams (length
penalty {job.length_penalty}, no repeated {job.no_repeat_ngram_size}-grams,
{job.min_new_tokens}-{job.max_new_tokens} new tokens). Stock: padding to max length, {job.num_beams}-beam validation
on every validation example per epoch, best checkpoint saved and reloaded, ROUGE against decoded (truncated) labels.
medsum: its defaults, i.e. dynamic padding, length-grouped batches, no validation (this job has one epoch, so its
one validation would fall on the last step and could not select anything: train.validate_lone_candidate=false skips
it), beam search that does not reorder the encoder's cross-attention cache, tokenize cache (cold here), ROUGE
against the full references. On this data every article is longer than 512 tokens and every abstract longer than
128, so dynamic padding and length grouping have no padding to remove in this job. "train s" of the stock recipe is
its wall time less data, validation and test (it includes model loading and checkpoint saving); of medsum it is the
time inside its training steps.
"""
    if args.medsum_set:
        notes += f"medsum ran with these extra overrides: `{' '.join(args.medsum_set)}`.\n"
    common.report(f"End to end: stock recipe vs medsum train ({args.model} model)", table, notes)


if __name__ == "__main__":
    main()
