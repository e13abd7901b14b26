"""Shared by the benchmark scripts: the local benchmark models, the data, the machine description and the
appending of result tables to docs/performance.md.

The benchmark model `small` has the exact layout of google/flan-t5-small (76,961,152 parameters, vocabulary 32,128,
untied lm_head) with random weights and a unigram tokenizer of 32,128 pieces trained on the benchmark data, because
no model hub is reachable here: speed depends on the layout, not on the weights. `tiny` is medsum's offline tiny
model, for quick checks of the scripts.
"""

from __future__ import annotations

import datetime
import gzip
import itertools
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sumpubmed"
PERFORMANCE_MD = REPO / "docs" / "performance.md"
SMALL_LAYOUT = "google/flan-t5-small"
TOKENIZER_TRAINING_ROWS = 400  # ~12 MB of text: enough for 32,128 unigram pieces, built in well under a minute
MODEL_INIT_SEED = 0
BENCH_MODEL_VERSION = "v1"  # bump to rebuild the cached benchmark models
report_path = PERFORMANCE_MD  # where report() appends; --report changes it

HEADER = """\
# Performance

Figures from the scripts in `benchmarks/`; every table below was appended by the script named above it, with the
exact command, the date, the machine and the load average (`os.getloadavg()`, 1/5/15 minutes) before and after
the measurement. On a shared machine a load average above the number of cores means the figures are slowed by
other work: compare only figures taken side by side in one table.

Reproduce from the repository root, offline (the first run builds the benchmark model once, about a minute):

```
make bench    # all of the below, after setting up .venv like `make test`

export HF_HUB_OFFLINE=1   # or one at a time, with the .venv that `make test` creates:
.venv/bin/python benchmarks/end_to_end.py     # the issue's LoRA job: stock Seq2SeqTrainer recipe vs `medsum train`
.venv/bin/python benchmarks/train_step.py     # tokens/s and model FLOP utilisation per method, fp32 and bf16
.venv/bin/python benchmarks/generate.py       # generation tokens/s and ROUGE scoring throughput
.venv/bin/python benchmarks/stock_recipe.py   # the stock recipe alone
```

Each takes `--model tiny` (medsum's toy model) for a quick check of the script itself (tests/test_benchmarks.py
runs every script that way) and `--report PATH` to append elsewhere; `--help` lists the rest.
On a machine shared with other work, add `--omp-passive` (`OMP_WAIT_POLICY=PASSIVE`): with the default policy,
OpenMP threads spin while waiting, and when other processes hold the cores, the many small operations of generation
become several times slower, which distorts every comparison that involves generation.
The `small` model has the exact layout of google/flan-t5-small (76,961,152 parameters) with random weights and a
unigram tokenizer of 32,128 pieces trained on the data: speed depends on the layout, not on the weights. A random
model rarely emits end-of-sequence, so every generation runs to its token limit: generation costs here are upper
bounds of a trained model's.
"""


# ---------------------------------------------------------------------------------------------- data


def read_rows(data_dir: Path, split: str, limit: int | None = None) -> list[dict]:
    """The first ``limit`` records of a split file (reading stops there)."""
    path = Path(data_dir) / f"{split}.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in itertools.islice(handle, limit)]


# ---------------------------------------------------------------------------------------------- models


def _build_small(target: Path, data_dir: Path) -> None:
    import torch

    from medsum.models import FAMILIES, build_from_config, untie_lm_head
    from medsum.shipped_configs import shipped_config
    from medsum.tiny_models import train_tokenizer

    config = shipped_config(SMALL_LAYOUT)
    rows = read_rows(data_dir, "train", TOKENIZER_TRAINING_ROWS)
    texts = [t for r in rows for t in (r["article"], r["abstract"])]
    tokenizer = train_tokenizer(texts, FAMILIES["t5"].tiny, config.vocab_size)
    if len(tokenizer) != config.vocab_size:  # the layout (and every FLOP count) assumes flan-t5-small's vocabulary
        raise RuntimeError(f"tokenizer has {len(tokenizer)} pieces, expected {config.vocab_size}")
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_INIT_SEED)
        model = build_from_config(config)
        untie_lm_head(model)
        with torch.no_grad():  # T5 v1.1 does not rescale decoder outputs: keep the initial logits near unit scale
            model.get_output_embeddings().weight.mul_(config.d_model ** -0.5)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_tiny(target: Path, data_dir: Path) -> None:
    from medsum.tiny_models import TINY_TOKENIZER_MAX_EXAMPLES, tiny_model_dir

    rows = read_rows(data_dir, "train", TINY_TOKENIZER_MAX_EXAMPLES)
    texts = [t for r in rows for t in (r["article"], r["abstract"])]
    shutil.copytree(tiny_model_dir(texts), target, dirs_exist_ok=True)


def model_dir(kind: str, data_dir: Path = DEFAULT_DATA) -> Path:
    """A local model directory (weights + tokenizer) of the benchmark model ``kind`` (small | tiny), built once."""
    from medsum import rundir
    from medsum.models import cache_dir

    builders = {"small": _build_small, "tiny": _build_tiny}
    target = cache_dir() / "bench" / f"{'flan-t5-small-layout' if kind == 'small' else 'tiny'}-{BENCH_MODEL_VERSION}"
    if (target / "config.json").is_file():
        return target
    with rundir.atomic_dir(target, replace=False) as staging:
        print(f"building the benchmark model {kind!r} once into {target} ...", flush=True)
        builders[kind](staging, Path(data_dir))
    return target


# ---------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return set(next(line.split(":", 1)[1].split() for line in handle if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def add_job_flags(parser, job) -> None:
    """The flags that size the issue's job (``job``: stock_recipe.Job, whose fields are the defaults)."""
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=job.steps)
    parser.add_argument("--examples", type=int, default=job.train_examples, help="training examples")
    parser.add_argument("--eval-examples", type=int, default=job.eval_examples, help="validation and test examples")
    parser.add_argument("--progress", action="store_true")


def add_machine_flags(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--report", type=Path, default=PERFORMANCE_MD, metavar="PATH",
                        help="markdown file the result table is appended to (default: docs/performance.md)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. On a shared, "
                             "overloaded machine spinning threads slow small operations (generation) several-fold")


def apply_machine_flags(args) -> None:
    """Must run before torch is imported: OpenMP reads its wait policy once, at start."""
    if "torch" in sys.modules and args.omp_passive:
        raise RuntimeError("--omp-passive must be applied before torch is imported")
    global report_path
    report_path = args.report
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def machine() -> str:
    import torch

    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    return (f"{cpu_model()}, {os.cpu_count()} cores ({', '.join(vector) or 'no AVX'}), "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, OMP_WAIT_POLICY {policy}, "
            f"Python {platform.python_version()}")


def load() -> str:
    """The 1/5/15-minute load averages, for reading figures taken on a shared machine."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def timed(record: dict, key: str) -> Iterator[None]:
    """Adds the wall seconds of the block to ``record[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record[key] = record.get(key, 0.0) + time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- reporting


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def commit() -> str:
    """The medsum commit measured (with +changes when the working tree differs from it)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--", "src", "benchmarks") else "")


def report(title: str, table: str, notes: str = "", path: Path | None = None) -> None:
    """Prints a result table and appends it, with command, date, commit and machine, to docs/performance.md (or
    to ``--report PATH``)."""
    path = path or report_path
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    section = (f"\n## {title}\n\n`{command_line()}`  \n{now}; medsum {commit()}; {machine()}; "
               f"load average at the end {load()}\n\n"
               f"{table}\n" + (f"\n{notes.strip()}\n" if notes.strip() else ""))
    print(section, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text(HEADER, encoding="utf-8")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(section)
