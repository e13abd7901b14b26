"""``medsum summarize``: summaries of text files (or stdin), as plain text or one JSON line per input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medsum.errors import MedsumError
from medsum.serve.summarizer import load_summarizer, read_run

STDIN = "-"


def read_input(name: str) -> str:
    if name == STDIN:
        text, where = sys.stdin.read(), "stdin"
    else:
        path = Path(name)
        if not path.is_file():
            raise MedsumError(f"input file not found: {name}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise MedsumError(f"{name}: not UTF-8 text (byte {err.start})") from None
        where = name
    if not text.strip():
        raise MedsumError(f"{where} is empty: nothing to summarise")
    return text


def summarize_command(run: str, files: list[str], as_json: bool, batch_size: int) -> int:
    """Prints one summary per input; every input is read (and refused if empty) before the model loads."""
    read_run(run)
    names = list(files) or [STDIN]
    if names.count(STDIN) > 1:
        raise MedsumError("stdin (-) can be read only once")
    texts = [read_input(name) for name in names]
    summaries = load_summarizer(run, batch_size=batch_size).summarize(texts)
    for name, summary in zip(names, summaries):
        if as_json:
            print(json.dumps({"file": name, "summary": summary}, ensure_ascii=False))
        elif len(names) > 1:
            print(f"==> {name} <==\n{summary}\n")
        else:
            print(summary)
    return 0
