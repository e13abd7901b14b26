"""Training-step throughput and model FLOP utilisation (MFU) of each method, fp32 and bf16 autocast.

One step is medsum's own (``medsum.train.loop.train_step``: collate, forward, backward, clipping, AdamW) on a batch of
real examples (8 x 512 source + 128 target tokens by default, every row full length on this data).

MFU = achieved model FLOP/s / peak FLOP/s, where the peak is the best rate of a large square matrix product
(``torch.mm``, 4096 x 4096, same dtype) measured in the same run, before and after the steps. Model FLOPs are
counted analytically from the architecture (``step_flops``), 2 FLOPs per multiply-add, matrix products only:

- forward: every linear layer costs 2 x tokens x in x out (encoder layers on the source tokens, plus the prompt for
  prompt tuning; decoder layers on the target tokens, except the cross-attention key/value projections, which run
  on the encoder output); attention costs 2 x 2 x queries x keys x (heads x d_kv) per layer (scores and weighted
  sum; the decoder's causal self-attention is computed in full by T5, so counted in full); the output head
  2 x target tokens x d_model x vocab; LoRA adds 2 x tokens x (d_model x r + r x out) per adapted projection.
- backward: a matrix product whose weight trains costs 2x its forward (gradient of input and of weight); a frozen
  weight (LoRA, prompt tuning: all base weights) costs 1x (gradient of input only) where the gradient has to flow
  through it, and 0 where its input needs no gradient (the q/k/v projections of the first decoder layer read the
  frozen decoder embeddings; with LoRA also those of the first encoder layer). Attention products cost 2x (both
  operands are activations).
- not counted: softmax, norms, GELU, dropout, the loss, the optimizer (they are the memory-bound rest that MFU
  measures the cost of).

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products autograd actually ran in one step; the
table shows it beside the analytic count as a check.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import common

METHODS = ("lora", "prompt_tuning", "full")
PRECISIONS = ("fp32", "bf16")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


@dataclass(frozen=True)
class Shape:
    batch: int
    source: int
    target: int


def step_flops(config, method: str, shape: Shape, lora_r: int = 16, prompt_tokens: int = 20) -> float:
    """Analytic FLOPs of one training step (forward + backward, matrix products only); see the module docstring."""
    d, inner, ff, vocab = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    n_ff = 3 if config.is_gated_act else 2
    b, t = shape.batch, shape.target
    s = shape.source + (prompt_tokens if method == "prompt_tuning" else 0)
    full = method == "full"

    def linear(tokens: int, d_in: int, d_out: int, weight_trains: bool, input_grad: bool = True) -> float:
        forward = 2 * tokens * d_in * d_out
        return forward * (1 + int(weight_trains) + int(input_grad))

    def lora(tokens: int, d_out: int) -> float:  # both factors train; the input gradient flows through them too
        return linear(tokens, d, lora_r, True) + linear(tokens, lora_r, d_out, True) if method == "lora" else 0.0

    def attention(queries: int, keys: int) -> float:
        return 3 * 2 * 2 * b * queries * keys * inner

    def feed_forward(tokens: int) -> float:
        return (n_ff - 1) * linear(tokens, d, ff, full) + linear(tokens, ff, d, full)

    total = 0.0
    for layer in range(config.num_layers):
        input_grad = not (layer == 0 and method == "lora")  # LoRA: the first layer reads the frozen embeddings
        total += 3 * linear(b * s, d, inner, full, input_grad) + linear(b * s, inner, d, full)
        total += 2 * lora(b * s, inner) + attention(s, s) + feed_forward(b * s)
    for layer in range(config.num_decoder_layers):
        input_grad = layer > 0 or full  # the decoder's input embeddings are frozen unless everything trains
        total += 3 * linear(b * t, d, inner, full, input_grad) + linear(b * t, inner, d, full)
        total += 2 * lora(b * t, inner) + attention(t, t)
        total += linear(b * t, d, inner, full) + linear(b * t, inner, d, full) + lora(b * t, inner)  # cross q, o
        total += 2 * linear(b * s, d, inner, full) + lora(b * s, inner)  # cross k, v on the encoder output
        total += attention(t, s) + feed_forward(b * t)
    total += linear(b * t, d, vocab, full)
    return total


def matmul_peak(dtype, size: int = 4096, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matrix product over ``seconds``."""
    import torch

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def build_setup(model_dir: Path, data_dir: Path, method: str, precision: str, shape: Shape,
                extra: tuple[str, ...] = ()):
    """medsum's own run setup (model, method, accelerator, tokenized data) for one configuration."""
    from accelerate.state import AcceleratorState

    from medsum.config import load_run_config
    from medsum.train import setup

    AcceleratorState._reset_state(reset_partial_state=True)  # each configuration picks its own mixed precision
    cfg = load_run_config(None, [f"model.name={model_dir}", f"data.path={data_dir}", f"method.name={method}",
                                 f"train.precision={precision}", f"train.batch_size={shape.batch}",
                                 f"data.max_train_examples={shape.batch}", "data.max_eval_examples=1",
                                 f"data.max_source_tokens={shape.source}", f"data.max_target_tokens={shape.target}",
                                 *extra])
    return setup(cfg)


def cpu_attention_flop_formulas() -> dict:
    """FlopCounterMode knows the GPU attention kernels only; T5 on CPU runs the CPU flash-attention kernel (whose
    backward recomputes the scores: one product more than the model needs)."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
    }


def measure(setup_, steps: int, profile: bool, compile_forward: bool = False) -> dict:
    """Seconds per step (median of ``steps`` after one warm-up), tokens per step, counted FLOPs and matmul share.

    ``compile_forward``: the steps run ``torch.compile(model)`` as medsum's ``train.compile`` does (FLOPs are counted
    on the eager step before, and a second warm-up step compiles)."""
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import get_constant_schedule

    from medsum.train.build import make_optimizer
    from medsum.train.loop import train_step

    model = setup_.model
    optimizer = make_optimizer(model, setup_.cfg)
    model, optimizer = setup_.accelerator.prepare(model, optimizer)
    scheduler = get_constant_schedule(optimizer)
    rows = [setup_.encoded["train"][: setup_.cfg.train.batch_size]]
    model.train()
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_flop_formulas())
    with counter:
        _, tokens = train_step(setup_, model, optimizer, scheduler, rows)
    compiled = torch.compile(model) if compile_forward else model
    # a plain function: train_step tests `forward or model`, and a compiled PEFT model refuses truth tests (len())
    forward = (lambda **batch: compiled(**batch)) if compile_forward else model
    if compile_forward:
        train_step(setup_, model, optimizer, scheduler, rows, forward=forward)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(setup_, model, optimizer, scheduler, rows, forward=forward)
        times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times), "tokens": tokens, "counted_flops": counter.get_total_flops()}
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            train_step(setup_, model, optimizer, scheduler, rows, forward=forward)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
        result["matmul_share"] = matmul / total if total else float("nan")
        result["top_other"] = ", ".join(
            f"{e.key.removeprefix('aten::')} {100 * e.self_cpu_time_total / total:.0f}%"
            for e in sorted((e for e in events if e.key not in MATMUL_OPS), key=lambda e: -e.self_cpu_time_total)[:3])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source", type=int, default=512, help="source tokens")
    parser.add_argument("--target", type=int, default=128, help="target tokens")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled step (matmul share of time)")
    parser.add_argument("--model-dropout", type=float, default=None, metavar="P",
                        help="medsum's model.dropout (default: the checkpoint's, 0.1 for Flan-T5); 0 measures what "
                             "drawing the dropout masks costs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward (medsum's train.compile)")
    common.add_machine_flags(parser)
    args = parser.parse_args()
    common.apply_machine_flags(args)
    import torch

    shape = Shape(args.batch, args.source, args.target)
    model_dir = common.model_dir(args.model, args.data)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    best_peak = {p: 0.0 for p in args.precisions}
    rows = []
    for method in args.methods:
        for precision in args.precisions:
            before = common.load()
            extra = () if args.model_dropout is None else (f"model.dropout={args.model_dropout}",)
            setup_ = build_setup(model_dir, args.data, method, precision, shape, extra)
            # the peak right before and after this configuration: on a shared machine the load changes between rows
            peak = matmul_peak(dtypes[precision])
            r = measure(setup_, args.steps, profile=not args.no_profile, compile_forward=args.compile)
            peak = max(peak, matmul_peak(dtypes[precision]))
            best_peak[precision] = max(best_peak[precision], peak)
            config = setup_.model.base_model.config if hasattr(setup_.model, "base_model") else setup_.model.config
            flops = step_flops(config, method, shape)
            achieved = flops / r["seconds"]
            dropout = f"model.dropout={args.model_dropout:g}" if args.model_dropout is not None else "checkpoint's"
            how = precision + (" compiled" if args.compile else "")
            rows.append([method, how, dropout, f"{r['seconds']:.2f}", f"{r['tokens'] / r['seconds']:,.0f}",
                         f"{flops / 1e9:,.0f}", f"{r['counted_flops'] / 1e9:,.0f}", f"{achieved / 1e9:,.0f}",
                         f"{peak / 1e9:,.0f}", f"{100 * achieved / peak:.1f}%",
                         f"{100 * r['matmul_share']:.0f}%" if "matmul_share" in r else "-", r.get("top_other", "-"),
                         f"{before} -> {common.load()}"])
            print(rows[-1], flush=True)
            del setup_
    table = common.markdown_table(
        ["method", "precision", "dropout", "s/step", "tokens/s", "model GFLOP/step (analytic)", "GFLOP/step (counted)",
         "GFLOP/s", "peak GFLOP/s", "MFU", "matmul share of step time", "largest other ops (self time)",
         "load before -> after"],
        rows)
    notes = ("Peak: torch.mm 4096 x 4096 of the same dtype, the best of 2 s right before and 2 s right after each "
             "configuration (best of the whole run: "
             + ", ".join(f"{p} {best_peak[p] / 1e9:,.0f} GFLOP/s" for p in args.precisions)
             + f"). Batch {shape.batch} x {shape.source} source + {shape.target} target tokens; tokens/s counts "
               "source and target tokens. Model FLOPs: see the docstring of benchmarks/train_step.py (analytic, "
               "matrix products only; 'counted' is FlopCounterMode on one real step).")
    common.report(f"Training step: throughput and MFU ({args.model} model)", table, notes)


if __name__ == "__main__":
    main()
