"""Small real training tasks that exercise the monitor end to end.

* :mod:`spectral_edge_fast.workloads.grokking`: modular-arithmetic grokking,
  the paper's reference experiment (docs/math.md#the-reference-experiment), behind ``spectral-edge demo``.
* :mod:`spectral_edge_fast.workloads.lm`: a small GPT on the bytes of the Python
  standard library's source, behind ``spectral-edge reproduce lm``.
* :mod:`spectral_edge_fast.workloads.dyck`: Dyck-1 recognition by a small
  transformer, behind ``spectral-edge reproduce dyck``.
* :mod:`spectral_edge_fast.workloads.scan`: SCAN's commands and action
  sequences generated from its grammar, and an encoder-decoder, behind
  ``spectral-edge reproduce scan``.
"""
