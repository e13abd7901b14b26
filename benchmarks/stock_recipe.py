"""The stock Hugging Face recipe for the issue's LoRA job: the baseline every medsum figure is compared with.

Written as a user would from the transformers summarization docs and the study's code: `datasets` loads and
tokenizes every run with ``padding="max_length"``, ``Seq2SeqTrainer`` trains and validates with
``predict_with_generate=True`` and 4-beam search over the whole validation set at every evaluation (once per
epoch), keeps the best checkpoint (``load_best_model_at_end``), and ``trainer.predict`` generates the test
summaries; ROUGE is rouge-score on one process against the decoded labels, as the docs' ``compute_metrics`` does.
Generation settings are the study's (4 beams, length penalty 2.0, no repeated 3-grams, at least 30 new tokens).

Run alone: python benchmarks/stock_recipe.py [--model tiny]; ``benchmarks/end_to_end.py`` imports
``run_stock_recipe`` and runs it in the same process as medsum.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common


@dataclass(frozen=True)
class Job:
    """The issue's job; both sides of end_to_end.py read their settings from here."""

    train_examples: int = 96
    eval_examples: int = 16  # validation and test each
    steps: int = 24
    batch_size: int = 4
    max_source_tokens: int = 512
    max_target_tokens: int = 128
    num_beams: int = 4
    length_penalty: float = 2.0
    no_repeat_ngram_size: int = 3
    min_new_tokens: int = 30
    max_new_tokens: int = 128
    eval_batch_size: int = 8
    learning_rate: float = 3e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    seed: int = 42


def run_stock_recipe(model_dir: Path, data_dir: Path, output_dir: Path, job: Job = Job(),
                     show_progress: bool = False) -> dict:
    """Trains, validates and tests the job with Seq2SeqTrainer; returns the wall seconds of each phase and the test
    ROUGE. The clock starts before the model and data are loaded, as medsum's does."""
    import numpy as np
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from rouge_score import rouge_scorer
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    times: dict = {}
    load_before = common.load()
    start, cpu_start = time.perf_counter(), time.process_time()
    with common.timed(times, "data_seconds"):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        files = {split: str(Path(data_dir) / f"{split}.jsonl.gz") for split in ("train", "validation", "test")}
        raw = load_dataset("json", data_files=files, cache_dir=str(Path(output_dir) / "datasets-cache"))
        raw["train"] = raw["train"].select(range(job.train_examples))
        raw["validation"] = raw["validation"].select(range(job.eval_examples))
        raw["test"] = raw["test"].select(range(job.eval_examples))

        def preprocess(batch):
            inputs = ["summarize: " + article for article in batch["article"]]
            model_inputs = tokenizer(inputs, max_length=job.max_source_tokens, padding="max_length", truncation=True)
            labels = tokenizer(text_target=batch["abstract"], max_length=job.max_target_tokens,
                               padding="max_length", truncation=True)
            model_inputs["labels"] = [[t if t != tokenizer.pad_token_id else -100 for t in row]
                                      for row in labels["input_ids"]]
            return model_inputs

        tokenized = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=job.lora_r,
                                             lora_alpha=job.lora_alpha, lora_dropout=job.lora_dropout,
                                             target_modules=["q", "v"]))
    generation_config = model.generation_config
    generation_config.update(num_beams=job.num_beams, length_penalty=job.length_penalty,
                             no_repeat_ngram_size=job.no_repeat_ngram_size, min_new_tokens=job.min_new_tokens,
                             max_new_tokens=job.max_new_tokens, early_stopping=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_predictions = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = [scorer.score(reference, prediction)
                  for reference, prediction in zip(decoded_labels, decoded_predictions)]
        return {key: 100 * float(np.mean([s[key].fmeasure for s in scores]))
                for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")}

    args = Seq2SeqTrainingArguments(
        output_dir=str(Path(output_dir) / "trainer"),
        per_device_train_batch_size=job.batch_size,
        per_device_eval_batch_size=job.eval_batch_size,
        learning_rate=job.learning_rate,
        max_steps=job.steps,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # transformers 5: a float below 1 is the warm-up ratio
        weight_decay=0.01,
        max_grad_norm=1.0,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="rouge1",
        predict_with_generate=True,
        generation_config=generation_config,
        seed=job.seed,
        use_cpu=True,
        report_to="none",
        logging_steps=job.steps,
        disable_tqdm=not show_progress,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=tokenized["train"],
                             eval_dataset=tokenized["validation"], processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                             compute_metrics=compute_metrics)
    trainer.train()
    with common.timed(times, "test_seconds"):
        test = trainer.predict(tokenized["test"], metric_key_prefix="test")
    times["wall_seconds"] = time.perf_counter() - start
    times["cpu_seconds"] = time.process_time() - cpu_start
    times["load"] = [f"{load_before} -> {common.load()}"]
    history = trainer.state.log_history
    times["eval_seconds"] = sum(row["eval_runtime"] for row in history if "eval_runtime" in row)
    times["train_loss"] = next((row["train_loss"] for row in history if "train_loss" in row), float("nan"))
    predictions = np.where(test.predictions != -100, test.predictions, tokenizer.pad_token_id)
    times["predictions"] = [text.strip() for text in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
    times["test_rouge1"] = test.metrics["test_rouge1"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_job_flags(parser, Job)
    common.add_machine_flags(parser)
    args = parser.parse_args()
    common.apply_machine_flags(args)
    job = Job(steps=args.steps, train_examples=args.examples, eval_examples=args.eval_examples)
    model_dir = common.model_dir(args.model, args.data)
    with tempfile.TemporaryDirectory(prefix="stock-recipe-") as output_dir:
        result = run_stock_recipe(model_dir, args.data, Path(output_dir), job, show_progress=args.progress)
    rows = [["stock Seq2SeqTrainer", f"{result['wall_seconds']:.1f}", f"{result['cpu_seconds']:.1f}",
             f"{result['data_seconds']:.1f}",
             f"{result['eval_seconds']:.1f}", f"{result['test_seconds']:.1f}", f"{result['test_rouge1']:.2f}",
             "; ".join(result["load"])]]
    common.report(f"Stock recipe alone ({args.model} model, LoRA r=16, {job.steps} steps of batch {job.batch_size})",
                  common.markdown_table(["recipe", "wall s", "CPU s", "data s", "validation s", "test s",
                                         "test ROUGE-1 (vs decoded labels)", "load before -> after"], rows))


if __name__ == "__main__":
    main()
