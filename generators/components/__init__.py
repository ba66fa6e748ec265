"""Pieces every generator family shares: set encoder, conditioner, per-tensor normalizer state,
weight autoencoder, ridge mean model, hidden-unit alignment, learning-rate schedules.

Import the module you need (`from generators.components.set_encoder import SetEncoder`);
this package imports nothing, so importing one piece never pulls in the others.
"""
