"""Freshly trained models of a zoo's own spec, new seeds: the novelty reference a generator is judged against.

    spec = fresh_spec(store, ["digits-pair:0-1", "digits-pair:3-8"])   # the zoo's recipe, the next seeds
    fresh_store, seeds = train_fresh(store, tasks, "/tmp/wsl-harness")   # trained once, reused after

Why fresh models: with a few seeds per task, independently trained models share mistakes
with the zoo more than noise of equal accuracy does (docs/design.md, "Generators"), so "more
novel than noise" says little. What a generator of genuinely new models could reach is
what new seeds of the same recipe reach: their accuracy, their overlap of mistakes with
the zoo (max IoU), their distance to the training set (aligned NN-L2) and their mutual
overlap (fresh-fresh IoU). The harness reports a generator's figures minus these.

The recipe comes from the store: every finished model's `hparams` JSON of the chosen tasks
must agree on everything but the dataset and the seed (one recipe), else a UserError.
New seeds: as many per task as the zoo has (its fewest), numbered after the zoo's largest
seed. The spec's name is the zoo's + "-fresh", so the model ids differ from the zoo's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from store import filters
from store.errors import UserError

DERIVED_ARCH_KEYS = ("in_features", "out_features")  # filled in from the dataset, not spec keys


def fresh_spec(store, tasks: Sequence[str], seeds_per_task: int | None = None) -> dict[str, Any]:
    """A spec (dict) that trains the zoo's recipe on `tasks` with new seeds (module docstring)."""
    tasks = sorted({str(t) for t in tasks})
    if not tasks:
        raise UserError("no tasks to train fresh models on", "give at least one task")
    p: dict[str, Any] = {"wsl_done": "done"}
    df = filters.select_models(store, None, filters.in_list("models.dataset", "wsl_tasks", tasks, p),
                               "models.status = $wsl_done", columns="DISTINCT models.model_id, models.zoo, "
                               "models.dataset, models.seed, models.hparams", order_by="models.model_id", params=p,
                               allow_empty=True)
    missing = sorted(set(tasks) - set(df["dataset"]))
    if missing:
        raise UserError(f"no finished zoo models of {missing} to take the recipe from",
                        "choose tasks the zoo holds finished models of")
    recipes = set()
    for h in df["hparams"]:
        d = json.loads(h)
        for k in ("dataset", "seed"):
            d.pop(k, None)
        recipes.add(json.dumps(d, sort_keys=True))
    if len(recipes) != 1:
        raise UserError(f"the zoo's models of {len(tasks)} task(s) were trained with {len(recipes)} different recipes",
                        "fresh models need one recipe: restrict the protocol to one zoo configuration")
    recipe = json.loads(recipes.pop())
    per_task = df.groupby("dataset")["seed"].nunique()
    k = int(seeds_per_task or per_task.min())
    first = int(df["seed"].max()) + 1
    zoo = str(df["zoo"].iloc[0])
    arch = {k2: v for k2, v in recipe["architecture"].items() if k2 not in DERIVED_ARCH_KEYS}
    epochs = int(recipe["epochs"])
    return {"name": f"{zoo}-fresh", "description": f"fresh seeds of zoo {zoo}'s recipe (novelty reference)",
            "dataset": tasks, "data_seed": int(recipe.get("data_seed", 0)), "epochs": epochs,
            "batch_size": int(recipe["batch_size"]), "seeds": list(range(first, first + k)),
            "architecture": arch, "optimizer": dict(recipe["optimizer"]), "schedule": dict(recipe["schedule"]),
            "checkpoints": {"epochs": [epochs]}}


def train_fresh(store, tasks: Sequence[str], root: str | Path, progress=None) -> tuple[Any, list[int]]:
    """(store of fresh models, their seeds): trained into ROOT/fresh-<hash of the spec>/, reused when there."""
    import zoo
    from store.store import ZooStore

    spec = fresh_spec(store, tasks)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(root) / f"fresh-{key}"
    fresh = ZooStore(path, create=True)
    zoo.train(spec, fresh, progress=progress)
    return fresh, list(spec["seeds"])
