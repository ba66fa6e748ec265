"""Loss-landscape metrics of a population: Hessian, mode connectivity, CKA, and Yang et al. phase labels.

    from zoo.landscape import compute_landscape, Recipe, Thresholds
    summary = compute_landscape("wsl-store", where="zoo = 'phases'", recipe=Recipe(probes=40))

Modules: recipe (what a value was measured with), hessian (batched products),
estimators (Lanczos, deflated trace), connectivity, cka, pairs (seed pairs),
phases (the rule, its thresholds, the uncertainty flag), run (store -> rows),
plot (heatmaps).
docs/landscape.md explains the metrics and the defaults.
"""
from zoo.landscape.phases import PHASES, Thresholds, phase_of
from zoo.landscape.recipe import Recipe
from zoo.landscape.run import LandscapeSummary, compute_landscape, landscape_recipe_id, relabel

__all__ = ["PHASES", "Thresholds", "phase_of", "Recipe", "LandscapeSummary", "compute_landscape",
           "landscape_recipe_id", "relabel"]
