"""``medsum export``: a self-contained model directory from a run (tokenizer included), written atomically.

What each run becomes:
    full fine-tuning       the fine-tuned model (--merge changes nothing: there is no adapter)
    LoRA --merge           one plain transformers model: LoRA merged in fp32 (peft #1388: merging in bf16/fp16 shifts
                           outputs), reloaded and compared with the adapter model before the export is kept
    LoRA, prompt tuning    the PEFT adapter, with base_model_name_or_path naming its base (copied into
                           DIR/base_model/ for the tiny model, so the export needs nothing outside it)
A ``medsum_export.json`` records the prefix, truncation and generation settings the run was tested with.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from medsum import rundir
from medsum.config import RunConfig
from medsum.errors import MedsumError
from medsum.serve.summarizer import base_model_source, load_model, read_run

MANIFEST = "medsum_export.json"
PROBE_TEXT = "A 54-year-old woman presented with fever, cough and bilateral infiltrates on chest radiography."


@contextmanager
def staged_directory(output: Path):
    """A temporary sibling of ``output`` that becomes ``output`` only when the block succeeds."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise MedsumError(f"--output {output} already exists and is not empty; choose another directory")
    with rundir.atomic_dir(output) as staging:
        yield staging


def export_run(run: Path, output: Path, merge: bool) -> str:
    """Writes the export and returns the line to print."""
    run, output = Path(run), Path(output)
    cfg = read_run(run)
    with staged_directory(output) as staging:
        note = _export_into(run, cfg, staging, output.resolve(), merge)
        _write_manifest(staging, run, cfg, merged=note is None and merge)
    return f"exported {cfg.method.name} run {run} to {output}" + (f" ({note})" if note else "")


def _export_into(run: Path, cfg: RunConfig, staging: Path, final: Path, merge: bool) -> str | None:
    """Fills ``staging``; returns a note when the export is not what --merge asked for."""
    from medsum.methods import METHODS

    if not METHODS[cfg.method.name].saves_adapter:
        _copy_files(run / rundir.MODEL, staging)
        _copy_files(run / rundir.TOKENIZER, staging)
        return "full fine-tuning has no adapter to merge: exported the fine-tuned model" if merge else None
    if merge and _is_prompt_learning(run / rundir.ADAPTER):
        _export_adapter(run, cfg, staging, final)
        return (f"{cfg.method.name} cannot be merged: its soft prompt is an extra input, not a weight update; "
                f"exported the adapter with its base model instead")
    if merge:
        _export_merged(run, cfg, staging)
    else:
        _export_adapter(run, cfg, staging, final)
    return None


def _is_prompt_learning(adapter_dir: Path) -> bool:
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(adapter_dir)).is_prompt_learning


def _copy_files(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise MedsumError(f"{source} not found: the run directory is incomplete")
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, target / path.name)


def _export_adapter(run: Path, cfg: RunConfig, staging: Path, final: Path) -> None:
    """The adapter and tokenizer side by side; the base is the hub id, a local directory, or a copy of the tiny base."""
    _copy_files(run / rundir.ADAPTER, staging)
    _copy_files(run / rundir.TOKENIZER, staging)
    base = base_model_source(run, cfg)
    if (run / rundir.BASE_MODEL).is_dir():
        shutil.copytree(run / rundir.BASE_MODEL, staging / "base_model")
        base = str(final / "base_model")
    config_path = staging / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base
    if adapter_config.get("tokenizer_name_or_path"):
        adapter_config["tokenizer_name_or_path"] = str(final)
    config_path.write_text(json.dumps(adapter_config, indent=2) + "\n")


def _export_merged(run: Path, cfg: RunConfig, staging: Path) -> None:
    from medsum.models import load_pretrained, load_tokenizer

    tokenizer = load_tokenizer(str(run / rundir.TOKENIZER))
    model = load_model(run, cfg, fp32=True).eval()
    probe = _probe(tokenizer, cfg, model)
    expected = _logits(model, probe)
    merged = model.merge_and_unload()
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del merged, model
    # reload from disk: the check covers what users get, e.g. an lm_head dropped as "tied" on save
    got = _logits(load_pretrained(str(staging)).eval(), probe)
    difference = float((got - expected).abs().max())
    if difference > 1e-3 * (1.0 + float(expected.abs().max())):
        raise MedsumError(f"the merged model's logits differ from the adapter model's by {difference:.3g}; "
                          f"nothing exported")


def _probe(tokenizer, cfg: RunConfig, model) -> dict:
    import torch

    input_ids = tokenizer(cfg.data.prefix + PROBE_TEXT, return_tensors="pt")["input_ids"]
    start = model.config.decoder_start_token_id or 0
    decoder_input_ids = torch.cat([torch.tensor([[start]]), input_ids[:, :8]], dim=1)
    return {"input_ids": input_ids, "decoder_input_ids": decoder_input_ids}


def _logits(model, probe: dict):
    import torch

    with torch.no_grad():
        return model(**probe).logits.float()


def _write_manifest(staging: Path, run: Path, cfg: RunConfig, merged: bool) -> None:
    manifest = {
        "run": str(run.resolve()),
        "model": cfg.model.name,
        "method": cfg.method.name,
        "merged": merged,
        "prefix": cfg.data.prefix,
        "max_source_tokens": cfg.data.max_source_tokens,
        "generate": {k: v for k, v in vars(cfg.generate).items() if k != "batch_size"},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
