"""The training loop: steps, validation-based selection of the best weights, and resumable checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from medsum import checkpoint as ckpt
from medsum import evaluation, rundir
from medsum.config import RunConfig
from medsum.data import collate
from medsum.errors import MedsumError
from medsum.methods import METHODS
from medsum.preemption import Preempted, StopSignals, stop_agreed
from medsum.train.build import Setup, Training, setup_optimizer
from medsum.train.tracking import Trackers


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


def train_loop(setup_: Setup, run_dir: Path, show_progress: bool = True,
               trackers: Trackers | None = None) -> Progress:
    """Trains with validation-based selection; leaves the best weights in the model. A stop signal (SIGTERM,
    SIGINT) ends the step under way, writes a checkpoint and raises ``Preempted`` (``medsum.preemption``)."""
    from tqdm.auto import tqdm

    cfg, accelerator = setup_.cfg, setup_.accelerator
    trackers = trackers or Trackers.none()
    training = setup_optimizer(setup_)
    progress, start = resume(setup_, training, run_dir)
    trackers.start(start)
    validation_steps = scheduled_validations(cfg, training.steps, training.per_epoch)
    if not validation_steps:
        progress.best_step = training.steps  # the final weights are tested
    bar = tqdm(total=training.steps, initial=start, desc=f"train {cfg.run_name}", unit="step",
               disable=not (show_progress and accelerator.is_main_process), dynamic_ncols=True)
    training.model.train()
    with StopSignals() as stop:
        for step in range(start, training.steps if not progress.stopped_early else start):
            loss = _step(setup_, training, progress, step, run_dir / rundir.TRAIN_LOG, trackers)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            done = step + 1
            if done in validation_steps:
                _validate(setup_, training, progress, done, run_dir / rundir.TRAIN_LOG, trackers)
            saved = bool(cfg.train.save_every and done % cfg.train.save_every == 0 and done < training.steps)
            if saved:
                _checkpoint(setup_, training, progress, done, run_dir / rundir.CHECKPOINTS)
            _stop_if_asked(setup_, training, progress, done, run_dir / rundir.CHECKPOINTS, stop, saved, bar)
            accelerator.wait_for_everyone()
            if progress.stopped_early:
                break
    bar.close()
    if training.best_weights is not None:
        ckpt.load_trainable_state(_unwrap(setup_, training.model), training.best_weights)
    setup_.model = _unwrap(setup_, training.model)
    return progress


def _stop_if_asked(setup_: Setup, training: Training, progress: Progress, done: int, root: Path,
                   stop: StopSignals, saved: bool, bar) -> None:
    """After step ``done``: when a stop signal reached any process, checkpoint (unless this step's periodic one
    was just written) and raise Preempted on every process."""
    signum = stop_agreed(setup_.accelerator, stop)
    if signum is None:
        return
    if not saved:
        _checkpoint(setup_, training, progress, done, root)
    setup_.accelerator.wait_for_everyone()
    bar.close()
    raise Preempted(signum, done, str(root / f"step-{done}"))


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


# ---------------------------------------------------------------------------------------------- the loop's parts


def resume(setup_: Setup, training: Training, run_dir: Path) -> tuple[Progress, int]:
    """(progress, first step): restored from the newest checkpoint, else a fresh start."""
    accelerator, log_path = setup_.accelerator, run_dir / rundir.TRAIN_LOG
    # checkpoints of train.save_every, or the one a stop signal left (also when save_every is 0)
    resumed = ckpt.load_latest_checkpoint(run_dir / rundir.CHECKPOINTS)
    if resumed is None:
        if accelerator.is_main_process:
            log_path.unlink(missing_ok=True)
        return Progress(), 0
    ckpt.load_trainable_state(_unwrap(setup_, training.model), resumed["trainable"])
    training.optimizer.load_state_dict(resumed["optimizer"])
    training.scheduler.load_state_dict(resumed["scheduler"])
    ckpt.restore_rng_state(resumed["rng"][accelerator.process_index])
    state = resumed["state"]
    progress = Progress(**{k: v for k, v in state.items() if k in Progress.__dataclass_fields__})
    training.best_weights, start = resumed["best"], state["step"]
    if accelerator.is_main_process:
        _truncate_log(log_path, start)
        print(f"resuming from {resumed['path']} (step {start} of {training.steps})", flush=True)
    return progress, start


def _step(setup_: Setup, training: Training, progress: Progress, step: int, log_path: Path,
          trackers: Trackers) -> float:
    """Trains optimizer step ``step`` (0-based), counts its time and tokens, logs it; returns its loss."""
    import torch

    cfg, accelerator = setup_.cfg, setup_.accelerator
    t0 = time.perf_counter()
    rows = [[setup_.encoded["train"][i] for i in micro] for micro in training.sampler.for_step(step)]
    learning_rate = training.scheduler.get_last_lr()[0]  # the rate this step trains at (read before it steps)
    loss, tokens = train_step(setup_, training.model, training.optimizer, training.scheduler, rows, training.forward,
                              step=step)
    seconds = time.perf_counter() - t0
    progress.train_seconds += seconds
    step_tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), reduction="sum"))
    progress.train_tokens += step_tokens
    done = step + 1
    if not math.isfinite(loss):
        raise MedsumError(
            f"non-finite loss ({loss}) at step {done}: training stopped. Likely causes: fp16 with T5 "
            f"(use train.precision=bf16 or fp32) or a learning rate too high "
            f"(train.learning_rate={cfg.train.learning_rate:g}); the last good checkpoint is kept")
    if accelerator.is_main_process and (done % cfg.train.log_every == 0 or done == training.steps):
        epoch = round(done / training.per_epoch, 4)
        rundir.append_jsonl(log_path, {"step": done, "epoch": epoch, "loss": loss,
                                       "learning_rate": learning_rate, "world_size": accelerator.num_processes})
        trackers.log({"train/loss": loss, "train/learning_rate": learning_rate, "train/epoch": epoch,
                      "train/tokens_per_second": step_tokens / max(seconds, 1e-9)}, done)
    return loss


def _validate(setup_: Setup, training: Training, progress: Progress, done: int, log_path: Path,
              trackers: Trackers) -> None:
    """Validates after step ``done``, keeps the weights when they are the best so far, and decides early stopping."""
    t0 = time.perf_counter()
    scores = evaluation.validate(setup_, training.model)
    progress.eval_seconds += time.perf_counter() - t0
    progress.evaluations += 1
    if scores["rouge1"] > progress.best_score:
        progress.best_score, progress.best_step = scores["rouge1"], done
        progress.best_validation = scores
        progress.evals_without_improvement = 0
        training.best_weights = ckpt.trainable_state(_unwrap(setup_, training.model))
    else:
        progress.evals_without_improvement += 1
    if setup_.accelerator.is_main_process:
        rundir.append_jsonl(log_path, {"step": done, "event": "validation",
                                       **{f"validation_{k}": v for k, v in scores.items()}})
        trackers.log({f"validation/{k}": v for k, v in scores.items()}, done)
    patience = setup_.cfg.train.early_stopping_patience
    if patience and progress.evals_without_improvement >= patience and done < training.steps:
        progress.stopped_early = True


def _checkpoint(setup_: Setup, training: Training, progress: Progress, done: int, root: Path) -> None:
    from accelerate.utils import gather_object

    rng_states = gather_object([ckpt.rng_state()])  # each process's dropout stream resumes as its own
    if setup_.accelerator.is_main_process:
        ckpt.save_checkpoint(root, done, _unwrap(setup_, training.model), training.optimizer, training.scheduler,
                             dataclasses.asdict(progress), training.best_weights, setup_.cfg.train.keep_checkpoints,
                             rng_states)


def train_step(setup_: Setup, model, optimizer, scheduler, rows: list[list[dict]],
               forward=None, step: int = 0) -> tuple[float, int]:
    """One optimizer step (``step``, 0-based) over this rank's micro-batches; returns (global mean token loss, real
    tokens seen). The method's ``after_optimizer_step`` runs after the step, before the gradients are cleared.

    The loss is the mean over every label token of the global batch, whatever the split across processes and
    micro-batches, so 2 processes x batch 2 optimise the same objective as 1 process x batch 4.
    """
    import torch

    accelerator = setup_.accelerator
    batches = [collate(r, setup_.tokenizer.pad_token_id) for r in rows]
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
        accelerator.backward(mean_loss * n_tokens * accelerator.num_processes / global_tokens)
        loss_sum += mean_loss.detach().double() * n_tokens
    if setup_.cfg.train.max_grad_norm > 0:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                    setup_.cfg.train.max_grad_norm)
    optimizer.step()
    scheduler.step()
    METHODS[setup_.cfg.method.name].after_optimizer_step(_unwrap(setup_, model), step)
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(loss_sum, reduction="sum")) / max(global_tokens, 1.0), real_tokens


def _unwrap(setup_: Setup, model):
    return setup_.accelerator.unwrap_model(model)


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
    rundir.atomic_write_text(path, "".join(line + "\n" for line in kept))
