"""Use a trained run: a Python summariser, ``medsum summarize``, ``medsum export`` and ``medsum serve``.

    summarizer.py   load a run directory (adapter checked), validate generation settings, summarise
    command.py      medsum summarize FILE... | -
    export.py       medsum export RUN_DIR --output DIR [--merge]
    app.py          medsum serve: FastAPI app, body limit, request batching, the bounded queue (503)
    schema.py       the HTTP API's contract: request and response models, every status
"""

from medsum.serve.app import create_app, serve
from medsum.serve.command import summarize_command
from medsum.serve.export import export_run
from medsum.serve.summarizer import GENERATION_BOUNDS, Summarizer, load_summarizer

__all__ = ["GENERATION_BOUNDS", "Summarizer", "create_app", "export_run", "load_summarizer", "serve",
           "summarize_command"]
