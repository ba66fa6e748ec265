"""The generator step of `wsl demo` prints what it ran and the retrieval baselines, and a rerun reuses the fit."""
import pytest

from store.store import ZooStore

TINY = dict(latent_dim=4, ae_hidden=16, ae_steps=10, steps=10, denoiser_hidden=16, denoiser_depth=1, set_hidden=8,
            cond_dim=8, batch_size=8, max_per_class=8, sample_steps=3)


@pytest.mark.slow
def test_generator_step_reports_baselines_and_reuses_the_fit(tmp_path):
    import zoo

    spec = {"name": "digits-pairs", "dataset": "digits-pair:*", "epochs": 1, "batch_size": 64, "seeds": 2,
            "architecture": {"name": "mlp", "width": 4, "depth": 1}, "optimizer": {"name": "adam", "lr": 0.01},
            "checkpoints": {"epochs": [1]}}
    st = ZooStore(tmp_path / "store", create=True)
    zoo.train(spec, st)
    from generators.demo import run

    lines, _ = run(st, tmp_path / "gen", n=4, options=TINY)
    text = "\n".join(lines)
    assert "10 autoencoder + 10 denoiser steps" in text and "reused" not in text
    assert "retrieval-select" in text and "retrieval-nearest" in text and "majority class" in text
    again, _ = run(st, tmp_path / "gen", n=4, options=TINY)
    assert "reused from" in again[0] and again[1:-1] == lines[1:-1]  # same generator, same numbers (timing aside)
    changed, _ = run(st, tmp_path / "gen", n=4, options={**TINY, "steps": 11})
    assert "reused" not in changed[0] and "11 denoiser steps" in changed[0]
