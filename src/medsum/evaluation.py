"""A run's two evaluations: validation during training (cheap, for model selection) and the test of the selected
weights (the full generate.* settings). Both generate across every process (``generate_sharded``) and score with
ROUGE as ``medsum.evaluate`` does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from medsum import measures, model_metrics
from medsum.evaluate import aggregate, generate_texts, generation_kwargs, rouge_per_example
from medsum.partial_predictions import PartialPredictions, pass_key

if TYPE_CHECKING:
    from medsum.train.build import Setup


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
    on_batch, generated_here = _recorder(setup_, shard, partial)
    texts, generated = generate_texts(accelerator.unwrap_model(model), setup_.tokenizer,
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


def _recorder(setup_: Setup, shard: list[int], partial: PartialPredictions | None):
    """(on_batch callback that appends each finished batch to ``partial`` or None, the shard positions it saw)."""
    generated_here: list[int] = []
    if partial is None:
        return None, generated_here
    def on_batch(indices, texts, counts):
        partial.append([(shard[k], partial.ids[shard[k]], text, n) for k, text, n in zip(indices, texts, counts)])
        generated_here.extend(indices)

    return on_batch, generated_here


def validation_rows(setup_: Setup) -> int:
    """How many validation rows (the first ones) validation during training scores: train.eval_max_examples."""
    return min(len(setup_.splits["validation"]), setup_.cfg.train.eval_max_examples or len(setup_.splits["validation"]))


def validate(setup_: Setup, model) -> dict[str, float]:
    """Cheap model selection: greedy (train.eval_num_beams) on at most train.eval_max_examples validation rows."""
    cfg = setup_.cfg
    limit = validation_rows(setup_)
    references = [e.target for e in setup_.splits["validation"][:limit]]
    g = cfg.generate
    settings = generation_kwargs(cfg.train.eval_num_beams, g.length_penalty, g.no_repeat_ngram_size,
                                 g.min_new_tokens, g.max_new_tokens)
    texts, _, _ = generate_sharded(setup_, model, setup_.encoded["validation"][:limit], settings)
    model.train()
    return aggregate(rouge_per_example(references, texts))


def test(setup_: Setup, show_progress: bool = True, run_dir: Path | None = None) -> tuple[dict, list[dict], float, int]:
    """Full generate.* settings on the whole (capped) test split; ROUGE against the full reference texts. With
    ``run_dir``, finished batches go to its partial-predictions file and an interrupted pass's are reused.
    Each row and the summary also carry ``medsum.measures`` (abstraction, numbers, readability) under "measures",
    and the configured ``medsum.model_metrics`` (evaluate.*) under "model_metrics".
    Returns (summary, one row per example, generation seconds, generated tokens)."""
    from tqdm.auto import tqdm

    cfg = setup_.cfg
    g = cfg.generate
    settings = generation_kwargs(g.num_beams, g.length_penalty, g.no_repeat_ngram_size, g.min_new_tokens,
                                 g.max_new_tokens)
    examples = setup_.splits["test"]
    bar = tqdm(total=len(examples), desc=f"test {cfg.run_name}", unit="ex",
               disable=not (show_progress and setup_.accelerator.is_main_process), dynamic_ncols=True)
    ids = [e.id for e in examples]
    partial = None
    if run_dir is not None:
        key = pass_key(setup_.model, settings, g.batch_size, ids, setup_.accelerator.num_processes)
        partial = PartialPredictions(run_dir, key, ids)
    t0 = time.perf_counter()
    texts, generated, reused = generate_sharded(setup_, setup_.model, setup_.encoded["test"], settings, bar.update,
                                                partial)
    seconds = time.perf_counter() - t0
    bar.close()
    references, sources = [], []
    for example in examples:  # one pass over the split (a large test split is read from disk)
        references.append(example.target)
        sources.append(example.source)
    rows, summary = score_predictions(ids, texts, references, sources, cfg.evaluate, {
        "gen_len": generated / max(len(texts), 1), "reused_predictions": reused})
    return summary, rows, seconds, generated


def score_predictions(ids: list, predictions: list[str], references: list[str], sources: list[str], evaluate_cfg,
                      extra: dict | None = None) -> tuple[list[dict], dict]:
    """A test pass's rows (id, prediction, reference, its ROUGE and measures) and summary (ROUGE means, ``extra``,
    empty predictions, examples, the measures' means), with the configured model-based metrics: one scoring for
    trained runs and extractive baselines alike."""
    per_example = rouge_per_example(references, predictions)
    rows = [{"id": i, "prediction": p, "reference": r, **scores}
            for i, p, r, scores in zip(ids, predictions, references, per_example)]
    rows = measures.add_measures(rows, sources)
    summary = {**aggregate(per_example), **(extra or {}),
               "empty_predictions": sum(1 for p in predictions if not p.strip()), "examples": len(predictions),
               "measures": measures.row_means(rows)}
    return model_metrics.add_model_metrics(rows, summary, sources, evaluate_cfg)
