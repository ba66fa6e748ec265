"""What a generator is measured by: report.py (accuracy, novelty, baselines, fine-tuning per condition),
records.py (the `generators` and `samples` rows), references.py (the zoo's checkpoints a report compares
with), baselines.py, novelty.py, finetune.py, plots.py. This package imports nothing itself.
"""
