"""Resumable checkpoints: ``RUN_DIR/checkpoints/step-N/`` with weights, optimizer, scheduler, RNG states and the
training state (which includes the data position: the step).

A checkpoint is written into a hidden temporary folder and renamed into place (``rundir.atomic_dir``), and
``state.json`` is written last, so a folder named ``step-N`` with a readable ``state.json`` is complete; anything
else (a crash while writing, a truncated file) is skipped when looking for the newest checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

from medsum import rundir

STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state(model) -> dict[str, Any]:
    """The trainable parameters (what changes during training), copied to the CPU."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


def load_trainable_state(model, state: dict[str, Any]) -> None:
    import torch

    parameters = dict(model.named_parameters())
    missing = [name for name in state if name not in parameters]
    if missing:
        raise KeyError(f"checkpoint holds parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, train_state: dict[str, Any],
                    best_weights: dict[str, Any] | None, keep: int, rng_states: list[dict] | None = None) -> Path:
    """Writes step-N; ``rng_states`` holds every process's RNG state (rank order), default this process's."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    # checkpoints past this step belong to an attempt we could not resume from (damaged): never keep them over this one
    for later_step, path in list_checkpoints(root):
        if later_step > step:
            shutil.rmtree(path, ignore_errors=True)
    final = root / f"step-{step}"
    with rundir.atomic_dir(final) as staging:
        save_file(trainable_state(model), str(staging / "trainable.safetensors"))
        if best_weights is not None:
            save_file(best_weights, str(staging / "best.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_states or [rng_state()]}, staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({**train_state, "step": step}))
    prune_checkpoints(root, keep)
    return final


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    for _, path in list_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".step-*"):  # staging folders of a crashed writer (rundir.atomic_dir)
        shutil.rmtree(stale, ignore_errors=True)


def load_latest_checkpoint(root: Path) -> dict[str, Any] | None:
    """The newest complete checkpoint, fully read into memory, or None. Damaged ones are skipped."""
    import torch
    from safetensors.torch import load_file

    for step, path in reversed(list_checkpoints(root)):
        try:
            state = json.loads((path / "state.json").read_text())
            loaded = {
                "path": path,
                "state": state,
                "trainable": load_file(str(path / "trainable.safetensors")),
                "best": load_file(str(path / "best.safetensors")) if (path / "best.safetensors").exists() else None,
                **torch.load(path / "optimizer.pt", weights_only=False),
            }
        except Exception:  # truncated or partial: fall back to an older one
            continue
        if state.get("step") == step:
            return loaded
    return None
