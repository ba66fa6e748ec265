"""`wsl average --save` / `wsl prune --save`: results kept as models with lineage, selectable, evaluable, exportable."""
from __future__ import annotations

import json

import pytest
import torch

from _zoo_fixtures import snapshot
from store import ZooStore
from store.import_modelzoos import import_model_zoos
from wsl.prune import prunable_mask


@pytest.fixture
def store(model_zoos_src, tmp_path):
    import_model_zoos(tmp_path / "s", model_zoos_src[0], dataset="digits")
    return ZooStore(tmp_path / "s", create=False)


def test_average_and_prune_save_derived_models_with_lineage(store, run_cli, tmp_path):
    code, out, err = run_cli("average", "--where", "status = 'imported'", "--dataset", "digits", "--k", "2", "--save",
                             "--store", store.path, "-f", "json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    code, out, err = run_cli("average", "--where", "status = 'imported'", "--dataset", "digits", "--mode", "seeds",
                             "--save", "--store", store.path, "-f", "json")
    assert code == 0, err
    seeds = json.loads(out)
    code, out, err = run_cli("prune", "--where", "status = 'imported' AND epoch = 3", "--dataset", "digits",
                             "--sparsity", "0.5,0.9", "--save", "--store", store.path, "-f", "json")
    assert code == 0 and json.loads(out)["summary"]["saved_models"] == 6, err
    d = store.sql("SELECT m.model_id, m.operation, m.operation_params, m.parent_checkpoint_ids, m.status, m.lr, m.seed, "
                  "m.dataset, m.architecture, c.checkpoint_id, c.test_acc, c.epoch FROM models m JOIN checkpoints c "
                  "USING (model_id) WHERE m.status = 'derived' ORDER BY m.operation, c.test_acc")
    assert len(d) == 3 + 1 + 6 and set(d.dataset) == {"digits"} and set(d.architecture) == {"mlp"}
    last_k = d[d.operation_params.str.contains("last-k")]
    for r in rows:  # the averaged weights are stored, with the accuracy the report gave and their parents
        mine = last_k[last_k.checkpoint_id == r["saved_checkpoint_id"]].iloc[0]
        assert mine.test_acc == r["accuracy_avg"] and len(mine.parent_checkpoint_ids) == 2
        assert all(p.startswith(r["model"]) for p in mine.parent_checkpoint_ids)
        parents, _ = store.weights(list(mine.parent_checkpoint_ids))
        w, _ = store.weights([mine.checkpoint_id])
        assert torch.allclose(w[0], parents.double().mean(0).float())
    seed_avg = d[d.operation_params.str.contains('"seeds"')].iloc[0]
    assert len(seed_avg.parent_checkpoint_ids) == 3 and seed_avg.lr != seed_avg.lr  # parents differ in lr: NULL
    assert seed_avg.test_acc == seeds["summary"]["accuracy_aligned_avg"]
    pruned = d[d.operation == "prune"]
    assert sorted(json.loads(p)["sparsity"] for p in pruned.operation_params) == [0.5] * 3 + [0.9] * 3
    w, meta = store.weights(pruned.checkpoint_id.tolist())
    cols = prunable_mask(store.layout(meta.layout_id[0]))
    achieved = (w[:, cols] == 0).double().mean(1).tolist()
    want = [json.loads(p)["sparsity"] for p in pruned.set_index("checkpoint_id").loc[meta.checkpoint_id].operation_params]
    assert achieved == pytest.approx(want, abs=1e-3)
    # SQL selects them by lineage; eval scores them; saving again is a no-op
    parent = pruned.parent_checkpoint_ids.iloc[0][0]
    n = store.sql("SELECT count(*) AS n FROM models WHERE operation = 'prune' AND list_contains(parent_checkpoint_ids, $p)",
                  {"p": parent}).n[0]
    assert n == 2
    code, _, err = run_cli("eval", "--where", "operation = 'prune'", "--dataset", "digits", "--store", store.path)
    assert code == 0, err
    before = snapshot(store.path)
    code, _, err = run_cli("prune", "--where", "status = 'imported' AND epoch = 3", "--dataset", "digits",
                           "--sparsity", "0.5,0.9", "--save", "--store", store.path)
    assert code == 0 and snapshot(store.path) == before, err
    code, _, err = run_cli("export", "--where", "operation = 'average'", tmp_path / "avg", "--format", "hf",
                           "--store", store.path)
    assert code == 0 and len([p for p in (tmp_path / "avg").iterdir() if p.is_dir()]) == 4, err
