"""One training run, top to bottom: set up -> train (validate, keep the best, checkpoint) -> test the best -> save.

The run directory (documented once, here):
    config.yaml          the fully resolved config
    train_log.jsonl      one line per logged step (step, loss, learning_rate, world_size, ...) and per validation
    checkpoints/step-N/  resumable checkpoints (train.save_every)
    adapter/ | model/    the trained weights: a PEFT adapter, or a save_pretrained model for full fine-tuning
    base_model/          the tiny base model (model.name=tiny only), so the run directory is self-contained
    tokenizer/           the tokenizer
    test_predictions.partial.jsonl   the test pass's finished batches while it runs (reused after a crash)
    predictions.jsonl    one line per test example with its ROUGE
    metrics.json         written last: its presence marks the run finished
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsum import checkpoint as ckpt
from medsum.config import RunConfig, atomic_write_text, save_run_config
from medsum.data import collate, length_grouped_batches, load_splits, tokenize, training_text_sample
from medsum.errors import MedsumError
from medsum.evaluate import (
    ROUGE_KEYS,
    SENTENCE_SPLITTER,
    aggregate,
    generate_texts,
    generation_kwargs,
    rouge_per_example,
)
from medsum.methods import METHODS, ModelContext
from medsum.models import (
    TINY_TOKENIZER_MAX_EXAMPLES,
    cache_dir,
    count_parameters,
    family_of,
    load_pretrained,
    load_tokenizer,
    parameter_report,
    resolve_model_source,
)
from medsum.partial_predictions import PARTIAL_FILE, PartialPredictions, pass_key

RUN_OUTPUTS = ("checkpoints", "adapter", "model", "base_model", "tokenizer", "predictions.jsonl", "metrics.json",
               "train_log.jsonl", "config.yaml", "error.txt", PARTIAL_FILE)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


@dataclass
class Setup:
    """Everything a run needs, built before anything is written to the run directory."""

    cfg: RunConfig
    accelerator: Any
    tokenizer: Any
    model: Any
    splits: dict[str, list]
    encoded: dict[str, list]
    model_source: str
    params: dict[str, Any]
    method_info: dict[str, Any]
    autocast_dtype: Any


@dataclass
class Progress:
    """The training state that a checkpoint must carry besides weights and optimizer."""

    best_score: float = -1.0
    best_step: int = 0
    best_validation: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    evaluations: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_tokens: int = 0
    stopped_early: bool = False


# ---------------------------------------------------------------------------------------------- setup


def _make_accelerator(precision: str):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    on_gpu = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # Frozen base weights never get gradients: tell DDP so instead of letting it guess (PITFALLS.md).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    # a study runs many runs in one process, possibly at different precisions; the process group (PartialState) stays
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed, cpu=not on_gpu, kwargs_handlers=[ddp])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return accelerator, precision, dtype


def resolve_config(cfg: RunConfig, family, precision: str) -> RunConfig:
    """The config with every 'null: take the default' resolved, as saved in config.yaml."""
    learning_rate = cfg.train.learning_rate or METHODS[cfg.method.name].default_learning_rate(cfg.model.name)
    return dataclasses.replace(
        cfg,
        name=cfg.run_name,
        output_dir=str(cfg.run_dir),
        data=dataclasses.replace(cfg.data, prefix=family.prefix if cfg.data.prefix is None else cfg.data.prefix),
        train=dataclasses.replace(cfg.train, precision=precision, learning_rate=learning_rate),
        method=METHODS[cfg.method.name].resolve(cfg.method, family),
    )


def check_inputs(cfg: RunConfig, show_progress: bool = False) -> None:
    """The input checks of setup() that need no model weights: data and model name (used before launching
    processes, so that a typo is one line from the launcher, not one per process)."""
    splits = load_splits(cfg.data, show_progress=show_progress)
    resolve_model_source(cfg.model.name, training_text_sample(splits["train"], TINY_TOKENIZER_MAX_EXAMPLES))


def setup(cfg: RunConfig, show_progress: bool = False) -> Setup:
    """Loads data, tokenizer and model and wraps the model with the method; raises MedsumError on bad input."""
    import torch
    from accelerate.utils import set_seed

    splits = load_splits(cfg.data, show_progress=show_progress)
    source = resolve_model_source(cfg.model.name, training_text_sample(splits["train"], TINY_TOKENIZER_MAX_EXAMPLES))
    tokenizer = load_tokenizer(source)
    model = load_pretrained(source, cfg.model.dropout)
    family = family_of(model.config)
    if cfg.train.precision == "fp16" and not family.fp16_safe:
        raise MedsumError(f"train.precision: fp16 is not supported for {family.model_type} models (activations "
                          f"overflow to NaN); use fp32 or bf16")
    accelerator, precision, autocast_dtype = _make_accelerator(cfg.train.precision)
    cfg = resolve_config(cfg, family, precision)
    base_params = count_parameters(model)["total"]
    if cfg.train.gradient_checkpointing:
        # non-reentrant: reentrant checkpointing silently trains nothing with frozen inputs (transformers #26221)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    set_seed(cfg.seed)  # new weights (LoRA, random prompts) are initialised from the run seed
    method = METHODS[cfg.method.name]
    context = ModelContext(cfg.model.name, source, family)
    model = method.apply(model, cfg.method, context)
    # new weights start equal on every process; dropout must not: one seed per process from here on
    set_seed(cfg.seed, device_specific=True)
    if cfg.train.gradient_checkpointing and method.saves_adapter:
        model.enable_input_require_grads()
    params = parameter_report(base_params, model)
    if params["trainable"] == 0:
        raise MedsumError(f"method {cfg.method.name} left no trainable parameters")
    if cfg.run_dir.exists() and not cfg.run_dir.is_dir():
        raise MedsumError(f"output_dir: {cfg.run_dir} exists and is not a directory")
    if len(splits["train"]) < accelerator.num_processes:
        raise MedsumError(f"{len(splits['train'])} training examples cannot be shared by "
                          f"{accelerator.num_processes} processes")
    token_cache = cache_dir() / "tokenized"
    encoded = {split: tokenize(examples, tokenizer, cfg.data.prefix, cfg.data.max_source_tokens,
                               cfg.data.max_target_tokens, cache=token_cache, what=f"{split} split",
                               show_progress=show_progress and accelerator.is_main_process)
               for split, examples in splits.items()}
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs; no effect on CPU
    return Setup(cfg, accelerator, tokenizer, model, splits, encoded, source, params,
                 method.describe(model, cfg.method), autocast_dtype)


# ---------------------------------------------------------------------------------------------- training


def _optimizer(model, cfg: RunConfig):
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.learning_rate, fused=fused)


def total_steps(cfg: RunConfig, lengths: list[int], world_size: int) -> tuple[int, int]:
    """(optimizer steps to run, optimizer steps per epoch): an epoch is one pass over the micro-batches that
    micro_batches_for_step draws (as in transformers, a partial accumulation at an epoch's end does not count)."""
    global_size = cfg.train.batch_size * world_size
    micro_batches = len([b for b in length_grouped_batches(lengths, global_size, cfg.seed, 0) if len(b) >= world_size])
    per_epoch = max(1, micro_batches // cfg.train.grad_accum)
    steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    return steps, per_epoch


def micro_batches_for_step(step: int, cfg: RunConfig, lengths: list[int], rank: int, world_size: int,
                           cache: dict) -> list[list[int]]:
    """This rank's example indices for each micro-batch of optimizer step ``step`` (0-based).

    Global micro-batches of ``batch_size * world_size`` examples are drawn epoch by epoch in a seeded order; rank r
    takes its slice, so every process sees a disjoint shard and the data position is just the step number.
    """
    global_size = cfg.train.batch_size * world_size
    out = []
    for k in range(cfg.train.grad_accum):
        index = step * cfg.train.grad_accum + k
        while True:
            epoch = cache.setdefault("epoch", 0)
            if "batches" not in cache:
                batches = length_grouped_batches(lengths, global_size, cfg.seed, epoch)
                cache["batches"] = [b for b in batches if len(b) >= world_size]
                cache["offset"] = cache.get("offset", 0)
            if index - cache["offset"] < len(cache["batches"]):
                break
            cache["offset"] += len(cache["batches"])
            cache["epoch"] = epoch + 1
            del cache["batches"]
        batch = cache["batches"][index - cache["offset"]]
        out.append(batch[rank::world_size])  # never empty: batches smaller than world_size were dropped
    return out


def _train_step(setup_: Setup, model, optimizer, scheduler, rows: list[list[dict]],
                forward=None) -> tuple[float, int]:
    """One optimizer step over this rank's micro-batches; returns (global mean token loss, real tokens seen).

    The loss is the mean over every label token of the global batch, whatever the split across processes and
    micro-batches, so 2 processes x batch 2 optimise the same objective as 1 process x batch 4.
    """
    import torch

    accelerator = setup_.accelerator
    pad_id = setup_.tokenizer.pad_token_id
    batches = [collate(r, pad_id) for r in rows]
    label_tokens = [int((b["labels"] != -100).sum()) for b in batches]
    global_tokens = float(accelerator.reduce(torch.tensor(sum(label_tokens), dtype=torch.float64,
                                                          device=accelerator.device), reduction="sum"))
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    real_tokens = 0
    for i, (batch, n_tokens) in enumerate(zip(batches, label_tokens)):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        real_tokens += n_tokens + int(batch["attention_mask"].sum())
        sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            step_model = forward if forward is not None else model  # a compiled module has no truth value
            mean_loss = step_model(**batch).loss
        # DDP averages gradients over processes, hence the world_size factor
        scaled = mean_loss * n_tokens * accelerator.num_processes / global_tokens
        accelerator.backward(scaled)
        loss_sum += mean_loss.detach().double() * n_tokens
    if setup_.cfg.train.max_grad_norm > 0:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                    setup_.cfg.train.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    total_loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(global_tokens, 1.0)
    return total_loss, real_tokens


def generate_sharded(setup_: Setup, model, encoded: list[dict], settings: dict, progress=None,
                     partial: PartialPredictions | None = None) -> tuple[list[str], int, int]:
    """Generates for every example, each process taking every world_size-th one, gathered back in input order:
    no example is lost or duplicated, whatever the number of processes. With ``partial``, finished batches are
    appended there and those of an interrupted pass reused. Returns (texts, generated tokens, reused examples)."""
    import torch
    from accelerate.utils import gather_object

    accelerator = setup_.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = list(range(rank, len(encoded), world))
    earlier = partial.load() if partial is not None else {}
    done = {k: earlier[i] for k, i in enumerate(shard) if i in earlier}
    on_batch, generated_here = None, []
    if partial is not None:
        ids = [e.id for e in setup_.splits["test"]]

        def on_batch(indices, texts, counts):
            partial.append([(shard[k], ids[shard[k]], text, n) for k, text, n in zip(indices, texts, counts)])
            generated_here.extend(indices)

    texts, generated = generate_texts(_unwrap(setup_, model), setup_.tokenizer,
                                      [encoded[i]["input_ids"] for i in shard], settings,
                                      setup_.cfg.generate.batch_size, accelerator.device, setup_.autocast_dtype,
                                      progress=progress, done=done, on_batch=on_batch)
    reused = len(shard) - len(generated_here) if partial is not None else 0
    if world == 1:
        return texts, generated, reused
    rows = gather_object([(i, text) for i, text in zip(shard, texts)])
    total = int(accelerator.reduce(torch.tensor(generated, device=accelerator.device), "sum"))
    reused = int(accelerator.reduce(torch.tensor(reused, device=accelerator.device), "sum"))
    ordered = dict(rows)
    return [ordered[i] for i in range(len(encoded))], total, reused


def _validation_rows(setup_: Setup) -> int:
    """How many validation rows (the first ones) validation during training scores: train.eval_max_examples."""
    return min(len(setup_.splits["validation"]), setup_.cfg.train.eval_max_examples or len(setup_.splits["validation"]))


def validate(setup_: Setup, model) -> dict[str, float]:
    """Cheap model selection: greedy (train.eval_num_beams) on at most train.eval_max_examples validation rows."""
    cfg = setup_.cfg
    limit = _validation_rows(setup_)
    references = [e.target for e in setup_.splits["validation"][:limit]]
    g = cfg.generate
    settings = generation_kwargs(cfg.train.eval_num_beams, g.length_penalty, g.no_repeat_ngram_size,
                                 g.min_new_tokens, g.max_new_tokens)
    texts, _, _ = generate_sharded(setup_, model, setup_.encoded["validation"][:limit], settings)
    model.train()
    return aggregate(rouge_per_example(references, texts))


def _unwrap(setup_: Setup, model):
    return setup_.accelerator.unwrap_model(model)


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Keeps the log lines up to a resumed checkpoint's step (the rerun writes the rest again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the half-written last line of a killed run
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def scheduled_validations(cfg: RunConfig, steps: int, per_epoch: int) -> set[int]:
    """The steps after which the run validates: every train.eval_every steps (0: every epoch) and the last step.

    A lone validation at the last step selects nothing (the final weights are the only candidate), so it is left
    out unless train.validate_lone_candidate asks for it.
    """
    every = cfg.train.eval_every or per_epoch
    scheduled = set(range(every, steps + 1, every)) | {steps}
    if scheduled == {steps} and not cfg.train.validate_lone_candidate:
        return set()
    return scheduled


def train_loop(setup_: Setup, run_dir: Path, show_progress: bool = True) -> Progress:
    """Trains with validation-based selection; leaves the best weights in the model."""
    import torch
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg, accelerator = setup_.cfg, setup_.accelerator
    model = setup_.model
    optimizer = _optimizer(model, cfg)
    lengths = setup_.encoded["train"].lengths()
    steps, per_epoch = total_steps(cfg, lengths, accelerator.num_processes)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(steps * cfg.train.warmup_ratio), steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    forward = torch.compile(model) if cfg.train.compile else model  # generation keeps the eager module
    progress, best_weights, start = Progress(), None, 0
    log_path = run_dir / "train_log.jsonl"

    resumed = ckpt.load_latest_checkpoint(run_dir / "checkpoints") if cfg.train.save_every else None
    if resumed is not None:
        ckpt.load_trainable_state(_unwrap(setup_, model), resumed["trainable"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        ckpt.restore_rng_state(resumed["rng"][accelerator.process_index])
        state = resumed["state"]
        progress = Progress(**{k: v for k, v in state.items() if k in Progress.__dataclass_fields__})
        best_weights, start = resumed["best"], state["step"]
        if accelerator.is_main_process:
            _truncate_log(log_path, start)
            print(f"resuming from {resumed['path']} (step {start} of {steps})", flush=True)
    elif accelerator.is_main_process:
        log_path.unlink(missing_ok=True)

    validation_steps = scheduled_validations(cfg, steps, per_epoch)
    if not validation_steps:
        progress.best_step = steps  # the final weights are tested
    batch_cache: dict = {}
    bar = tqdm(total=steps, initial=start, desc=f"train {cfg.run_name}", unit="step",
               disable=not (show_progress and accelerator.is_main_process), dynamic_ncols=True)
    model.train()
    for step in range(start, steps if not progress.stopped_early else start):
        t0 = time.perf_counter()
        indices = micro_batches_for_step(step, cfg, lengths, accelerator.process_index, accelerator.num_processes,
                                         batch_cache)
        rows = [[setup_.encoded["train"][i] for i in micro] for micro in indices]
        step_learning_rate = scheduler.get_last_lr()[0]  # the rate this step trains at (read before it steps)
        loss, tokens = _train_step(setup_, model, optimizer, scheduler, rows, forward)
        progress.train_seconds += time.perf_counter() - t0
        progress.train_tokens += int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device),
                                                        reduction="sum"))
        done = step + 1
        if not math.isfinite(loss):
            raise MedsumError(
                f"non-finite loss ({loss}) at step {done}: training stopped. Likely causes: fp16 with T5 "
                f"(use train.precision=bf16 or fp32) or a learning rate too high "
                f"(train.learning_rate={cfg.train.learning_rate:g}); the last good checkpoint is kept")
        if accelerator.is_main_process and (done % cfg.train.log_every == 0 or done == steps):
            _append_log(log_path, {"step": done, "epoch": round(done / per_epoch, 4), "loss": loss,
                                   "learning_rate": step_learning_rate,
                                   "world_size": accelerator.num_processes})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if done in validation_steps:
            t0 = time.perf_counter()
            scores = validate(setup_, model)
            progress.eval_seconds += time.perf_counter() - t0
            progress.evaluations += 1
            if scores["rouge1"] > progress.best_score:
                progress.best_score, progress.best_step = scores["rouge1"], done
                progress.best_validation = scores
                progress.evals_without_improvement = 0
                best_weights = ckpt.trainable_state(_unwrap(setup_, model))
            else:
                progress.evals_without_improvement += 1
            if accelerator.is_main_process:
                _append_log(log_path, {"step": done, "event": "validation", **{f"validation_{k}": v
                                                                                for k, v in scores.items()}})
            patience = cfg.train.early_stopping_patience
            if patience and progress.evals_without_improvement >= patience and done < steps:
                progress.stopped_early = True
        if cfg.train.save_every and done % cfg.train.save_every == 0 and done < steps:
            rng_states = gather_object([ckpt.rng_state()])  # each process's dropout stream resumes as its own
            if accelerator.is_main_process:
                ckpt.save_checkpoint(run_dir / "checkpoints", done, _unwrap(setup_, model), optimizer, scheduler,
                                     dataclasses.asdict(progress), best_weights, cfg.train.keep_checkpoints,
                                     rng_states)
        accelerator.wait_for_everyone()
        if progress.stopped_early:
            break
    bar.close()
    if best_weights is not None:
        ckpt.load_trainable_state(_unwrap(setup_, model), best_weights)
    setup_.model = _unwrap(setup_, model)
    return progress


# ---------------------------------------------------------------------------------------------- test and save


def test(setup_: Setup, show_progress: bool = True, run_dir: Path | None = None) -> tuple[dict, list[dict], float, int]:
    """Full generate.* settings on the whole (capped) test split; ROUGE against the full reference texts. With
    ``run_dir``, finished batches go to its partial-predictions file and an interrupted pass's are reused."""
    from tqdm.auto import tqdm

    cfg = setup_.cfg
    g = cfg.generate
    settings = generation_kwargs(g.num_beams, g.length_penalty, g.no_repeat_ngram_size, g.min_new_tokens,
                                 g.max_new_tokens)
    examples = setup_.splits["test"]
    bar = tqdm(total=len(examples), desc=f"test {cfg.run_name}", unit="ex",
               disable=not (show_progress and setup_.accelerator.is_main_process), dynamic_ncols=True)
    partial = None
    if run_dir is not None:
        key = pass_key(setup_.model, settings, g.batch_size, [e.id for e in examples],
                       setup_.accelerator.num_processes)
        partial = PartialPredictions(run_dir, key)
    t0 = time.perf_counter()
    texts, generated, reused = generate_sharded(setup_, setup_.model, setup_.encoded["test"], settings, bar.update,
                                                partial)
    seconds = time.perf_counter() - t0
    bar.close()
    references = [e.target for e in examples]
    per_example = rouge_per_example(references, texts)
    rows = [{"id": e.id, "prediction": p, "reference": e.target, **scores}
            for e, p, scores in zip(examples, texts, per_example)]
    summary = aggregate(per_example)
    summary["gen_len"] = generated / max(len(examples), 1)
    summary["empty_predictions"] = sum(1 for p in texts if not p.strip())
    summary["examples"] = len(examples)
    summary["reused_predictions"] = reused
    return summary, rows, seconds, generated


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _atomic_dir(target: Path, write) -> None:
    """Writes a folder via a temporary sibling, then renames it into place."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def save_weights(setup_: Setup, run_dir: Path) -> int:
    """Saves what the method trained (adapter/ or model/), the tokenizer, and the tiny base model; returns the size
    in bytes of the trained weights."""
    method = METHODS[setup_.cfg.method.name]
    folder = run_dir / ("adapter" if method.saves_adapter else "model")
    _atomic_dir(folder, setup_.model.save_pretrained)
    _atomic_dir(run_dir / "tokenizer", setup_.tokenizer.save_pretrained)
    if setup_.cfg.model.name == "tiny":
        _atomic_dir(run_dir / "base_model", lambda d: shutil.copytree(setup_.model_source, d))
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def _hardware(accelerator) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "device_type": "cuda", "count": accelerator.num_processes}
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": name, "device_type": "cpu", "count": accelerator.num_processes, "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def reset_peak_memory() -> None:
    """Starts this run's peak-memory reading afresh (a study runs many runs in one process)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the process's peak resident set (VmHWM)
    except OSError:
        pass


def peak_memory_bytes() -> int:
    """Peak CUDA memory allocated on a GPU (the peak, not the end-of-step reading); peak RSS of the process on CPU
    since reset_peak_memory."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("medsum", "torch", "transformers", "peft", "accelerate", "rouge-score", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _validation_summary(setup_: Setup, progress: Progress) -> dict[str, Any]:
    cfg = setup_.cfg
    if progress.evaluations == 0:
        return {"best_step": progress.best_step, "evaluations": 0,
                "skipped": "one candidate only (the final weights); train.validate_lone_candidate=true validates it"}
    return {**progress.best_validation, "best_step": progress.best_step, "evaluations": progress.evaluations,
            "num_beams": cfg.train.eval_num_beams, "examples": _validation_rows(setup_)}


def write_results(setup_: Setup, run_dir: Path, progress: Progress, test_summary: dict, rows: list[dict],
                  test_seconds: float, generated: int, weight_bytes: int) -> dict:
    cfg = setup_.cfg
    atomic_write_text(run_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    method_config = {k: v for k, v in dataclasses.asdict(cfg.method).items() if k != "name"}
    metrics = {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "method_config": {**method_config, **setup_.method_info},
        "seed": cfg.seed,
        "params": setup_.params,
        "validation": _validation_summary(setup_, progress),
        "test": test_summary,
        "efficiency": {
            "train_seconds": progress.train_seconds,
            "train_tokens_per_second": progress.train_tokens / progress.train_seconds if progress.train_seconds else 0,
            "peak_memory_bytes": peak_memory_bytes(),
            "eval_seconds": progress.eval_seconds + test_seconds,
            "generate_tokens_per_second": generated / test_seconds if test_seconds else 0.0,
            "adapter_bytes": weight_bytes,
            "precision": cfg.train.precision,
        },
        "stopped_early": progress.stopped_early,
        "hardware": _hardware(setup_.accelerator),
        "rouge": {"package": "rouge-score", "use_stemmer": True, "f1_x100": True,
                  "references": "full reference text from the data", "rougeLsum_sentence_splitter": SENTENCE_SPLITTER},
        "versions": _versions(),
        "status": "done",
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def prepare_run_dir(run_dir: Path, cfg: RunConfig, force: bool) -> None:
    """Refuses to mix a different config into an unfinished run; --force starts the run over."""
    if force:
        for name in RUN_OUTPUTS:
            target = run_dir / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        return
    saved = run_dir / "config.yaml"
    if saved.is_file():
        import yaml

        previous = yaml.safe_load(saved.read_text())
        if previous != dataclasses.asdict(cfg):
            raise MedsumError(f"output_dir {run_dir} holds an unfinished run with a different config.yaml; "
                              f"use another output_dir, or --force to start over")


def run(cfg: RunConfig, force: bool = False, show_progress: bool = True) -> dict | None:
    """Runs one training run into its run directory and returns its metrics (None when already finished)."""
    run_dir = cfg.run_dir
    if is_finished(run_dir) and not force:
        return None
    reset_peak_memory()
    setup_ = setup(cfg, show_progress)  # every input error surfaces here, before anything is written
    cfg = setup_.cfg
    accelerator = setup_.accelerator
    if accelerator.is_main_process:
        prepare_run_dir(run_dir, cfg, force)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(cfg, run_dir / "config.yaml")
        p = setup_.params
        print(f"run {cfg.run_name}: {cfg.method.name} on {cfg.model.name}, {p['trainable']:,} of {p['total']:,} "
              f"parameters trainable ({p['trainable_pct']:.4f}%), {len(setup_.splits['train'])} training examples, "
              f"{accelerator.num_processes} process(es), {cfg.train.precision}", flush=True)
    accelerator.wait_for_everyone()
    progress = train_loop(setup_, run_dir, show_progress)
    summary, rows, seconds, generated = test(setup_, show_progress, run_dir)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    weight_bytes = save_weights(setup_, run_dir)
    metrics = write_results(setup_, run_dir, progress, summary, rows, seconds, generated, weight_bytes)
    PartialPredictions(run_dir, "").remove()  # predictions.jsonl holds them all now
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    print("test " + "  ".join(f"{k} {summary[k]:.2f}" for k in ROUGE_KEYS) + f"  -> {run_dir}", flush=True)
    return metrics
