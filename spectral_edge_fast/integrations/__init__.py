"""Callbacks for training frameworks, each in its own optional module:

* :mod:`spectral_edge_fast.integrations.lightning`: ``SpectralEdgeCallback``
  for PyTorch Lightning (``pip install lightning``);
* :mod:`spectral_edge_fast.integrations.huggingface`: ``SpectralEdgeCallback``
  for the Hugging Face ``Trainer`` (``pip install transformers``).

accelerate needs no callback: ``SpectralMonitor(model, optimizer)`` takes the
prepared model and optimizer, and counts the steps the wrapped optimizer takes.

Importing a module whose framework is missing raises an ImportError that
names the package to install; nothing here imports them eagerly.
"""
