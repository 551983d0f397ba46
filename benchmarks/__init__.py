"""The result pipeline: what a study's run folder yields for the person who ran it.

`python -m benchmarks RUN_DIR` writes RUN_DIR/results.csv (one row per trial, reference model and baseline),
pareto.csv (the exact Pareto front) and benchmark.json (hypervolume, knee, baseline verdicts, seed means of the
confirmed models, compute spent), after re-measuring the latency of the models a user would pick side by side with
nothing training. `benchmarks.collect` builds the table and analyses it, `benchmarks.pareto` holds the front and the
hypervolume reference rule, `benchmarks.latency` the re-measurement, `benchmarks.recommend` which model to take.

The developers' own measurements (trial speed, search quality, schedulers, runtimes) are `devbench/`, which is not
installed; the name `benchmarks/` is the one the project's design card gives the result pipeline.
"""
