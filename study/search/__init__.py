"""Stage 7, the search: the space file, the Ray Tune + Optuna study driver, the searcher, samplers, scheduler,
progress, baselines and the study's results.
"""
