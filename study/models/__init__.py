"""Stage 2, models: model families by name, the student (width, pruned width, warm start), checkpoints, pruning
methods, and parameter / MAC counts.
"""
