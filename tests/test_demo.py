"""`wsl demo` runs end to end (generator step left to `make demo`: it trains 225 models) and resumes."""
import pytest


@pytest.mark.slow
def test_demo_runs_and_a_second_run_skips_training(tmp_path, run_cli):
    store, out = tmp_path / "store", tmp_path / "out"
    code, text, err = run_cli("demo", "--store", store, "--out", out, "--skip-generator")
    assert code == 0, err
    for step in ("[1]", "[2]", "[3]", "[4]", "[5]", "[7]"):
        assert step in text
    assert "75 trained now" in text and "aligned average" in text
    assert (out / "phases" / "phase_diagram.png").exists() and (out / "hub" / "README.md").exists()
    code, text, err = run_cli("demo", "--store", store, "--out", out, "--skip-generator")
    assert code == 0, err
    assert "75 already in the store, 0 trained now" in text and "0 computed now, 75 stored before" in text
