"""The developers' own performance and comparison benchmarks (see devbench/README.md).

Not part of the installed product (pyproject's packages leave this folder out): run them from a clone, e.g.
`python -m devbench.speed`. The product's result pipeline of a study run is `benchmarks`
(`python -m benchmarks RUN_DIR`).
"""
