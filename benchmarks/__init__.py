"""Results table, exact Pareto front, hypervolume and latency re-measurement of a study run directory.

`python -m benchmarks RUN_DIR` writes RUN_DIR/results.csv, pareto.csv and benchmark.json (see `benchmarks.collect`;
the hypervolume reference rule is documented in `benchmarks.pareto`).
"""
