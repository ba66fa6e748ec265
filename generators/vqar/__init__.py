"""The VQ-VAE + autoregressive generator (`--method vqar`): weights as chunk tokens, one generator for several widths.

model.py (the WeightGenerator), quantizer.py (VQ-VAE over chunks, codebook health),
prior.py (causal transformer with a condition prefix), layouts.py (tensor ids, positions,
layout descriptors, the family rule), health.py (reconstruction and decoded-zoo checks).
"""
from generators.vqar.model import VQAutoregressive

__all__ = ["VQAutoregressive"]
