"""Stage 6, one trial: distill, prune, fine-tune, measure and write the trial's folder (`execute_trial`).
"""
