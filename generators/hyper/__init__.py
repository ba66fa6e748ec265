"""Hypernetworks (`--method hyper`): MIP and dependency-preserving RNN hypernetworks, trained on the tasks' own loss.

model.py (the generator), nets.py (mlp / chunked / rnn), encoding.py (MIP), losses.py,
training.py (task / zoo / both), continual.py (continual mode and its baselines).
"""
from generators.hyper.model import HyperNetwork

__all__ = ["HyperNetwork"]
