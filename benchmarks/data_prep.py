"""Data preparation at the paper's size: memory stays flat as the training split grows.

For each size (12,000, 60,000 and 120,000 training examples by default) the script writes a split folder as the
scale acceptance check does (the sample's training rows repeated, each copy's texts made unique by a replica tag;
validation and test as given), then prepares it as ``medsum train`` does (``load_splits`` + ``tokenize`` of the three
splits, 1,024 source / 256 target tokens, with the benchmark model's tokenizer) in a fresh process with a cold cache,
and again with the warm cache. It reports wall seconds, training examples per second, the process's peak resident
memory and the size of the prepared cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

DEFAULT_SIZES = (12_000, 60_000, 120_000)


def write_split_folder(data_dir: Path, out: Path, examples: int) -> Path:
    """The check's data: training rows repeated with a replica tag in front of both texts (no cache can serve one
    copy for another); validation and test linked as given. Written once per size."""
    done = out / "train.jsonl.gz"
    if done.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rows = common.read_rows(data_dir, "train")
    tmp = out / "train.jsonl.gz.tmp"
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as handle:
        for k in range(math.ceil(examples / len(rows))):
            for row in rows[: examples - k * len(rows)]:
                handle.write(json.dumps({"id": f"{row['id']}-r{k}", "article": f"replica {k}. {row['article']}",
                                         "abstract": f"replica {k}. {row['abstract']}"}) + "\n")
    for split in ("validation", "test"):
        link = out / f"{split}.jsonl.gz"
        if not link.exists():
            link.symlink_to((data_dir / f"{split}.jsonl.gz").resolve())
    tmp.rename(done)
    return out


def prepare(folder: str, model: str, cache: str, max_source: int, max_target: int) -> None:
    """The child process: medsum's data preparation, timed; prints seconds and peak resident memory as JSON."""
    from medsum.config import DataConfig
    from medsum.data import load_splits, tokenize
    from medsum.models import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(model)
    splits = load_splits(DataConfig(path=folder), cache=Path(cache) / "data")
    for split, examples in splits.items():
        tokenize(examples, tokenizer, "summarize: ", max_source, max_target, cache=Path(cache) / "tokenized",
                 what=f"{split} split")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_bytes": peak,
                      "train_examples": len(splits["train"])}))


def measure(folder: Path, model: Path, cache: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), str(model), str(cache), str(args.max_source),
               str(args.max_target)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"data preparation of {folder} failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("small", "tiny"), default="small", help="whose tokenizer prepares")
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="training examples")
    parser.add_argument("--max-source", type=int, default=1024)
    parser.add_argument("--max-target", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the generated data and caches go (default: the medsum cache's bench/data-prep)")
    parser.add_argument("--report", type=Path, default=common.PERFORMANCE_MD, metavar="PATH")
    args = parser.parse_args()
    common.report_path = args.report
    from medsum.models import cache_dir

    workdir = args.workdir or cache_dir() / "bench" / "data-prep"
    model = common.model_dir(args.model, args.data)
    rows = []
    for size in args.sizes:
        folder = write_split_folder(args.data, workdir / f"pubmed-size-{size}", size)
        cache = workdir / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = measure(folder, model, cache, args)
        warm = measure(folder, model, cache, args)
        rows.append([f"{cold['train_examples']:,}", cold["seconds"], cold["train_examples"] / cold["seconds"],
                     cold["peak_bytes"] / 2**30, warm["seconds"], warm["peak_bytes"] / 2**30,
                     folder_bytes(cache) / 2**30])
        shutil.rmtree(cache, ignore_errors=True)
    table = common.markdown_table(["training examples", "cold: seconds", "cold: train examples/s",
                                   "cold: peak memory GiB", "warm: seconds", "warm: peak memory GiB",
                                   "prepared cache GiB"], rows)
    notes = (f"Tokenizer of the `{args.model}` benchmark model; {args.max_source} source / {args.max_target} target "
             "tokens; validation and test (200 rows each) prepared too. Cold: a fresh process and an empty cache "
             "(read, check and store the texts as Arrow, then tokenize in batches of 1,000 cut texts); warm: a "
             "second process mapping the prepared cache.")
    common.report(f"Data preparation at scale ({args.model} tokenizer)", table, notes)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        prepare(*sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
