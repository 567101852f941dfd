"""lit_hyperet: a PyTorch Lightning experiment suite for HyperET (hyperbolic radius tuning of visual embeddings) and
hyperbolic image–text alignment."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["HyperETLitModule", "HyperbolicAlignmentModule", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import lit_hyperet.geometry` does not pull in Lightning and transformers.
    if name == "HyperETLitModule":
        from lit_hyperet.lit_module import HyperETLitModule

        return HyperETLitModule
    if name == "HyperbolicAlignmentModule":
        from lit_hyperet.alignment_module import HyperbolicAlignmentModule

        return HyperbolicAlignmentModule
    raise AttributeError(name)
