"""Use a trained run: a Python summariser, ``medsum summarize``, ``medsum export`` and ``medsum serve``.

    summarizer.py   load a run directory (adapter checked), validate generation settings, summarise
    command.py      medsum summarize FILE... | -
    export.py       medsum export RUN_DIR --output DIR [--merge]
    app.py          medsum serve: FastAPI app, body limit, request batching
"""

from medsum.serve.command import summarize_command
from medsum.serve.export import export_run
from medsum.serve.summarizer import GENERATION_BOUNDS, Summarizer, load_summarizer


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int = 1_000_000,
          max_texts: int = 16) -> None:
    """Serves a run over HTTP (imports FastAPI only when asked to serve)."""
    from medsum.serve.app import serve as run_server

    run_server(run, host=host, port=port, max_body_bytes=max_body_bytes, max_texts=max_texts)


__all__ = ["GENERATION_BOUNDS", "Summarizer", "export_run", "load_summarizer", "serve", "summarize_command"]
