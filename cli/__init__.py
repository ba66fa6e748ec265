"""The `wsl` command: thin, parses and calls the packages, prints."""
import os

# Idle OpenMP threads sleep instead of spinning. The populations we train and evaluate are many
# small ops; with spinning threads, any other busy process on a 2-core machine made training 20x
# slower (measured: `wsl zoo train phases` 6.5 s passive vs 133 s spinning beside one busy core).
# Must be set before torch loads libgomp; users can still override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
