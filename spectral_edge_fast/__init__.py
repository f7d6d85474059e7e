"""spectral-edge-fast: the rolling-window Gram matrix of parameter updates,
kept live during training, and the spectral-edge diagnostics built on it."""
from .gram import gram
from .kernels import backends
from .window import GramState, GramWindow

__all__ = ["GramState", "GramWindow", "backends", "gram"]
__version__ = "0.1.0"
