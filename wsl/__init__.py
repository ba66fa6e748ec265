"""Weight-space core: one vocabulary (ParamLayout) for flat weight vectors, and the operations on them."""
from store.errors import UserError
from store.architectures import trust_code
from store.layout import ParamLayout, register_architecture
from wsl.data import Dataset
from wsl.functional import population_forward
from wsl.normalize import Normalizer
from wsl.evaluate import EvalResult, evaluate  # `wsl.evaluate(...)` is the function; the module is wsl.evaluate in sys.modules
from wsl.loader import WeightLoader
from wsl.batchnorm import fold_batchnorm, reset_running_stats

__version__ = "0.1.0"
__all__ = ["UserError", "ParamLayout", "register_architecture", "Dataset", "__version__",
           "population_forward", "Normalizer", "evaluate", "EvalResult", "WeightLoader", "fold_batchnorm",
           "reset_running_stats", "trust_code"]
