"""Stage 7, the search: the space file, the study's typed plan (study.json) and trial context, the Ray Tune + Optuna
study driver, the searcher, samplers, scheduler, progress, baselines, the end-of-study summary and the study's results.
"""
