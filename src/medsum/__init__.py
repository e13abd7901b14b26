"""medsum: adapt sequence-to-sequence models to medical summarization and compare the ways of doing it."""

from medsum.errors import MedsumError

__version__ = "0.1.0"
__all__ = ["MedsumError", "load", "__version__"]


def load(run_dir, **kwargs):
    """A summariser for a trained run directory: ``medsum.load("runs/lora-s1").summarize(text)``."""
    from medsum.serve import load_summarizer

    return load_summarizer(run_dir, **kwargs)
