"""Setting a run up: its data, its model (wrapped by the method) and its optimizer, each in its own part, and every
input error raised before anything is written to the run directory."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum.config import RunConfig
from medsum.data import load_splits, tokenize
from medsum.errors import MedsumError
from medsum.methods import METHODS, ModelContext
from medsum.models import (
    cache_dir,
    count_parameters,
    family_of,
    load_config,
    load_pretrained,
    load_tokenizer,
    parameter_report,
)
from medsum.tiny_models import resolve_model_source
from medsum.train.sampler import MicroBatchSampler, total_steps
from medsum.train.tracking import TrackingPlace, check_available, tracker_objects


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
class Training:
    """The live objects of the training loop (``setup_optimizer``); the model is the Accelerate-prepared one."""

    model: Any
    forward: Any  # the model, or its torch.compile'd forward (generation keeps the eager module)
    optimizer: Any
    scheduler: Any
    sampler: MicroBatchSampler
    steps: int
    per_epoch: int
    best_weights: dict[str, Any] | None = None


def setup(cfg: RunConfig, show_progress: bool = False, place: TrackingPlace | None = None) -> Setup:
    """Loads data, tokenizer and model and wraps the model with the method; raises MedsumError on bad input.
    ``place``: where the trackers of train.report_to log (default: the run's own directory and name)."""
    import torch

    check_available(cfg.train.report_to)
    splits = load_splits(cfg.data, show_progress=show_progress)
    source = resolve_model_source(cfg.model.name, splits["train"])
    family = checked_family(cfg, source)
    tokenizer = load_tokenizer(source)
    model = load_pretrained(source, cfg.model.dropout)
    accelerator, precision, autocast_dtype = make_accelerator(cfg.train.precision, tracker_objects(cfg, place),
                                                              cfg.run_dir)
    cfg = resolve_config(cfg, family, precision)
    check_run(cfg, splits, accelerator.num_processes)
    encoded = setup_data(cfg, splits, tokenizer, show_progress and accelerator.is_main_process)
    steps, _ = total_steps(cfg, make_sampler(cfg, encoded, accelerator))
    model, params, method_info = setup_model(cfg, model, source, family, steps)
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs; no effect on CPU
    return Setup(cfg, accelerator, tokenizer, model, splits, encoded, source, params, method_info, autocast_dtype)


def checked_family(cfg: RunConfig, source: str):
    """The model's family, read from its configuration: a method or precision it cannot take is refused before
    any weight is loaded."""
    config = load_config(source)
    family = family_of(config)
    METHODS[cfg.method.name].check_family(family)
    if cfg.train.precision == "fp16" and not family.fp16_safe:
        raise MedsumError(f"train.precision: fp16 is not supported for {family.model_type} models (activations "
                          f"overflow to NaN); use fp32 or bf16")
    check_positions(cfg, family, config)
    return family


def check_inputs(cfg: RunConfig, show_progress: bool = False) -> None:
    """The input checks of setup() that need no model weights: data and model name (used before launching
    processes, so that a typo is one line from the launcher, not one per process)."""
    splits = load_splits(cfg.data, show_progress=show_progress)
    resolve_model_source(cfg.model.name, splits["train"])


def check_positions(cfg: RunConfig, family, config) -> None:
    """Sources and targets must fit a family's position embeddings (BART, PEGASUS: 1,024); T5's are relative."""
    limit = getattr(config, family.position_limit_key, None) if family.position_limit_key else None
    for key, length in (("data.max_source_tokens", cfg.data.max_source_tokens),
                        ("data.max_target_tokens", cfg.data.max_target_tokens)):
        if limit is not None and length > limit:
            raise MedsumError(f"{key}: {length} tokens exceed the {limit} positions of this {family.model_type} "
                              f"model ({family.position_limit_key}); use at most {limit}, or a LongT5 model")


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


def make_accelerator(precision: str, trackers: list | None = None, run_dir: Path | None = None):
    """(Accelerator, the precision 'auto' resolved to, the autocast dtype or None for fp32); ``trackers``
    (``medsum.train.tracking``) are started by the training loop."""
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
    accelerator = Accelerator(mixed_precision=mixed, cpu=not on_gpu, kwargs_handlers=[ddp], log_with=trackers or None,
                              project_dir=str(run_dir) if run_dir is not None else None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return accelerator, precision, dtype


# ---------------------------------------------------------------------------------------------- the three parts


def setup_model(cfg: RunConfig, model, source: str, family,
                steps: int | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The model wrapped by the run's method: (model, parameter report, what the method resolved). ``steps``: the
    run's optimizer steps (AdaLoRA's schedule spans them; None outside a run)."""
    from accelerate.utils import set_seed

    base_params = count_parameters(model)["total"]
    if cfg.train.gradient_checkpointing:
        # non-reentrant: reentrant checkpointing silently trains nothing with frozen inputs (transformers #26221)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    set_seed(cfg.seed)  # new weights (LoRA, random prompts) are initialised from the run seed
    method = METHODS[cfg.method.name]
    model = method.apply(model, cfg.method, ModelContext(cfg.model.name, source, family, steps))
    method.prepare_generation(model)
    # new weights start equal on every process; dropout must not: one seed per process from here on
    set_seed(cfg.seed, device_specific=True)
    if cfg.train.gradient_checkpointing and method.saves_adapter:
        model.enable_input_require_grads()
    params = parameter_report(base_params, model)
    if params["trainable"] == 0:
        raise MedsumError(f"method {cfg.method.name} left no trainable parameters")
    return model, params, method.describe(model, cfg.method)


def check_run(cfg: RunConfig, splits: dict[str, list], num_processes: int) -> None:
    if cfg.run_dir.exists() and not cfg.run_dir.is_dir():
        raise MedsumError(f"output_dir: {cfg.run_dir} exists and is not a directory")
    if len(splits["train"]) < num_processes:
        raise MedsumError(f"{len(splits['train'])} training examples cannot be shared by {num_processes} processes")


def setup_data(cfg: RunConfig, splits: dict[str, list], tokenizer, show_progress: bool = False) -> dict[str, list]:
    """Every split tokenized (through the tokenize cache)."""
    token_cache = cache_dir() / "tokenized"
    return {split: tokenize(examples, tokenizer, cfg.data.prefix, cfg.data.max_source_tokens,
                            cfg.data.max_target_tokens, cache=token_cache, what=f"{split} split",
                            show_progress=show_progress)
            for split, examples in splits.items()}


def setup_optimizer(setup_: Setup) -> Training:
    """AdamW, the linear warm-up schedule over the run's steps and the data sampler, prepared by Accelerate."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    cfg, accelerator = setup_.cfg, setup_.accelerator
    optimizer = make_optimizer(setup_.model, cfg)
    sampler = make_sampler(cfg, setup_.encoded, accelerator)
    steps, per_epoch = total_steps(cfg, sampler)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(steps * cfg.train.warmup_ratio), steps)
    model, optimizer = accelerator.prepare(setup_.model, optimizer)
    forward = torch.compile(model) if cfg.train.compile else model
    return Training(model, forward, optimizer, scheduler, sampler, steps, per_epoch)


def make_sampler(cfg: RunConfig, encoded: dict[str, Any], accelerator) -> MicroBatchSampler:
    return MicroBatchSampler(encoded["train"].lengths(), cfg.train.batch_size, cfg.train.grad_accum, cfg.seed,
                             accelerator.process_index, accelerator.num_processes)


def make_optimizer(model, cfg: RunConfig):
    """AdamW over the trainable parameters; no weight decay on biases and norms (fewer than 2 dimensions)."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.learning_rate, fused=fused)
