"""Weight generators behind one interface: diffusion, vqar, hyper."""
from generators.base import METHODS, Condition, WeightGenerator, load_generator, read_config
from generators.diffusion import LatentDiffusion

__all__ = ["METHODS", "Condition", "WeightGenerator", "load_generator", "read_config", "LatentDiffusion"]
