"""spectral-edge-fast: the rolling-window Gram matrix of parameter updates,
kept live during training, and the spectral-edge diagnostics built on it."""
from .config import MonitorOptions, WindowOptions
from .frames import read_run
from .gram import gram
from .kernels import backends
from .monitor import SpectralMonitor
from .offline import CheckpointError, analyze_checkpoints
from .report import render
from .sinks import Sink
from .window import GramState, GramWindow

__all__ = [
    "CheckpointError",
    "GramState",
    "GramWindow",
    "MonitorOptions",
    "Sink",
    "SpectralMonitor",
    "WindowOptions",
    "analyze_checkpoints",
    "backends",
    "gram",
    "read_run",
    "render",
]
__version__ = "0.1.0"
