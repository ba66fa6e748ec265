"""Weight generators behind one interface: diffusion, vqar (VQ-VAE tokens + autoregressive prior), hyper.

    from generators import LatentDiffusion, load_generator, Condition, METHODS

Layout of the package (docs/generators.md):
    interface.py      WeightGenerator: fit / fit_tensors / sample / save / load, the hooks a method fills
    saving.py         save_pretrained / from_pretrained / read_config / load_generator
    registry.py       method name -> class (built-ins, register_method, entry points "wsl.generators")
    conditions.py     Condition, resolve_dataset, select-by-training-loss
    training_set.py   which checkpoints a generator is fit on (SQL through store/filters.py), by id
    components/       set encoder, conditioner, normalizer state, autoencoder, ridge mean, symmetry, schedules
    diffusion/        the latent diffusion method
    vqar/             VQ-VAE chunk tokens + causal-transformer prior, several layouts of one family
    evaluation/       report, records (generators / samples rows), baselines, novelty, fine-tuning, plots
    protocol.py       the digits-pairs unseen-dataset protocol
    demo.py           the generator step of `wsl demo`
"""
from generators.conditions import Condition
from generators.diffusion import LatentDiffusion
from generators.interface import WeightGenerator
from generators.registry import METHODS, get_method, method_names, register_method
from generators.saving import load_generator, read_config

__all__ = ["METHODS", "Condition", "WeightGenerator", "load_generator", "read_config", "LatentDiffusion",
           "get_method", "method_names", "register_method"]
