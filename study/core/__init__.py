"""Shared ground every stage stands on: errors (UserError -> exit 2), atomic file writes and hashes, value formatting,
the Pareto dominance rule, name registries, device choice, and the paths of a study's run folder (RunDir).
"""
