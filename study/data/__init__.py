"""Stage 1, data: data sets by name or folder, the stratified train/validation/test splits, and the tensors a trial
trains on (resident in memory or streamed).
"""
