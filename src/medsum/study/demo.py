"""The offline demo: the study in ``demo.yaml`` (shipped with medsum) run on the given data, on the randomly
initialised ``tiny`` model, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from medsum.errors import MedsumError
from medsum.settings import read_yaml
from medsum.study.spec import spec_from_dict

DEMO_STUDY = Path(__file__).with_name("demo.yaml")


def demo_spec_dict(data: Path) -> dict:
    """The demo study with its data path filled in."""
    tree = read_yaml(DEMO_STUDY)
    tree["base"]["data"]["path"] = str(data)
    return tree


def run_demo(data: Path, output: Path, show_progress: bool = True) -> Path:
    """Runs the demo study into ``output`` (resumable like any study) and returns the report folder."""
    from medsum.study import run_spec

    data = Path(data).expanduser()
    if not data.exists():
        raise MedsumError(f"--data {data}: no such file or directory (the SumPubMed sample ships in "
                          f"../shared/data/sumpubmed; any folder with train/validation/test.jsonl[.gz] works)")
    _one_thread()
    spec_dict = demo_spec_dict(data.resolve())
    started = time.perf_counter()
    record = f"# medsum demo --data {data} --output {output}\n" + yaml.safe_dump(spec_dict, sort_keys=False)
    run_spec(spec_from_dict(spec_dict, str(DEMO_STUDY)), output, [], show_progress=show_progress, record=record)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s. The tiny model is randomly initialised, so "
          f"these numbers show the machinery, not which method is better.\nThe real study, on a GPU: "
          f"medsum study run examples/pubmed-flan-t5.yaml --output runs/pubmed-flan-t5", flush=True)
    return Path(output).resolve() / "report"


def _one_thread() -> None:
    import torch

    # The tiny model's matrices are too small to share out between threads, and on a busy CPU the threads' waits
    # cost far more: measured 3-4 s a run with 1 thread against ~30 s with 2 at load 7 on 2 cores.
    torch.set_num_threads(1)
