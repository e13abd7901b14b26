"""Generation and ROUGE scoring throughput: medsum's evaluation against the plain way, on the same inputs.

Generation: ``medsum.evaluate.generate_texts`` (length-sorted batches, dynamic padding) against plain
``model.generate`` on batches of the same size in input order, padded to the longest row of each batch, with the
test settings (4 beams, length penalty 2.0, no repeated 3-grams, 30-128 new tokens). Two input sets: the job's
(test articles cut at 512 tokens: every article is longer, so all rows have the same length) and one of varied
length (the test abstracts as sources, 160-670 tokens), where sorting by length has padding to save.

ROUGE: ``medsum.evaluate.rouge_per_example`` (rouge-score's tokenizer over a memoized stemmer; in one process, and
in a process pool over all cores) against single-process rouge-score
(one ``RougeScorer`` with rouge1/2/L/Lsum and stemming, one pair at a time) on the same pairs (references: the
training abstracts; predictions: the lead sentences of each article, a realistic summary-length text); the script
asserts that both give identical scores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common


def plain_generate(model, tokenizer, texts_ids: list[list[int]], settings: dict, batch_size: int) -> tuple[list, int]:
    """model.generate on batches in input order, each padded to its longest row."""
    import torch

    outputs, generated = [], 0
    for start in range(0, len(texts_ids), batch_size):
        batch = tokenizer.pad({"input_ids": texts_ids[start:start + batch_size]}, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **settings)
        for row in output:
            tokens = [t for t in row.tolist()[1:] if t != tokenizer.pad_token_id]
            generated += len(tokens)
            outputs.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return outputs, generated


def medsum_generate(model, tokenizer, texts_ids: list[list[int]], settings: dict, batch_size: int) -> tuple[list, int]:
    from medsum.evaluate import generate_texts

    return generate_texts(model, tokenizer, texts_ids, settings, batch_size, "cpu")


def generation_rows(model_dir: Path, data_dir: Path, examples: int, batch_size: int, beams: int,
                    max_new_tokens: int) -> list[list]:
    from medsum.evaluate import generation_kwargs
    from medsum.models import load_pretrained, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_pretrained(str(model_dir)).eval()
    settings = generation_kwargs(beams, 2.0, 3, 30, max_new_tokens)
    rows = common.read_rows(data_dir, "test", examples)
    inputs = {
        "articles cut at 512 tokens (the job)": tokenizer(["summarize: " + r["article"] for r in rows],
                                                          max_length=512, truncation=True)["input_ids"],
        "abstracts as sources (varied length)": tokenizer(["summarize: " + r["abstract"] for r in rows],
                                                          max_length=1024, truncation=True)["input_ids"],
    }
    table = []
    for name, ids in inputs.items():
        lengths = sorted(len(i) for i in ids)
        result = {}
        # alternate the order, so that load from other work falls on both sides
        for side in ("plain", "medsum") if len(table) % 4 == 0 else ("medsum", "plain"):
            before = common.load()
            start = time.perf_counter()
            run = plain_generate if side == "plain" else medsum_generate
            texts, generated = run(model, tokenizer, ids, settings, batch_size)
            result[side] = (time.perf_counter() - start, generated, texts, f"{before} -> {common.load()}")
        same = sum(a == b for a, b in zip(result["plain"][2], result["medsum"][2]))
        for side in ("plain", "medsum"):
            seconds, generated, _, load = result[side]
            label = "model.generate, input order" if side == "plain" else "medsum generate_texts, length-sorted"
            table.append([name, f"{lengths[0]}-{lengths[-1]}", label, f"{seconds:.1f}", generated,
                          f"{generated / seconds:.1f}", f"{result['plain'][0] / seconds:.2f}x",
                          f"{same}/{len(ids)}", load])
            print(table[-1], flush=True)
    return table


def lead(article: str, words: int = 250) -> str:
    """The article's first sentences up to about ``words`` words: a summary-like prediction."""
    return " ".join(article.split()[:words])


def rouge_rows(data_dir: Path, pairs: int) -> list[list]:
    from rouge_score import rouge_scorer

    from medsum.evaluate import ROUGE_KEYS, rouge_per_example, split_sentences

    rows = common.read_rows(data_dir, "train", pairs)
    references = [r["abstract"] for r in rows]
    predictions = [lead(r["article"]) for r in rows]

    def single_process() -> list[dict]:
        scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
        out = []
        for reference, prediction in zip(references, predictions):
            # rougeLsum needs one sentence per line (PITFALLS.md); the other keys ignore line breaks
            scores = scorer.score("\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction)))
            out.append({key: 100.0 * scores[key].fmeasure for key in ROUGE_KEYS})
        return out

    results = {}
    for name, score in (("rouge-score, one process", single_process),
                        ("medsum rouge_per_example, one process",
                         lambda: rouge_per_example(references, predictions, workers=1)),
                        ("medsum rouge_per_example, process pool", lambda: rouge_per_example(references, predictions)),
                        ("rouge-score, one process (again)", single_process)):
        before = common.load()
        start = time.perf_counter()
        results[name] = (score(), time.perf_counter() - start, f"{before} -> {common.load()}")
    baseline = results["rouge-score, one process"][0]
    for name, (scores, _, _) in results.items():
        if scores != baseline:
            raise SystemExit(f"{name} scores differ from single-process rouge-score")
    reference_seconds = min(results["rouge-score, one process"][1], results["rouge-score, one process (again)"][1])
    return [[name, pairs, f"{seconds:.2f}", f"{pairs / seconds:,.0f}", f"{reference_seconds / seconds:.2f}x",
             "identical", load] for name, (_, seconds, load) in results.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    parser.add_argument("--examples", type=int, default=16, help="inputs per generation input set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=400, help="(reference, prediction) pairs scored")
    parser.add_argument("--skip-generation", action="store_true")
    common.add_machine_flags(parser)
    args = parser.parse_args()
    common.apply_machine_flags(args)
    model_dir = common.model_dir(args.model, args.data)
    if not args.skip_generation:
        rows = generation_rows(model_dir, args.data, args.examples, args.batch_size, args.beams, args.max_new_tokens)
        common.report(
            f"Generation: medsum vs plain model.generate ({args.model} model)",
            common.markdown_table(["inputs", "input tokens", "how", "seconds", "generated tokens", "tokens/s",
                                   "speed-up", "same text as plain", "load before -> after"], rows),
            f"{args.examples} inputs, batch {args.batch_size}, {args.beams} beams, at most {args.max_new_tokens} new "
            f"tokens, fp32. A random model rarely stops early, so each row generates about the same tokens.")
    rows = rouge_rows(args.data, args.pairs)
    common.report("ROUGE scoring: process pool vs one process",
                  common.markdown_table(["scorer", "pairs", "seconds", "pairs/s", "speed-up", "scores",
                                         "load before -> after"], rows),
                  "rouge1/2/L/Lsum with stemming, Lsum on one sentence per line; scores asserted identical.")


if __name__ == "__main__":
    main()
