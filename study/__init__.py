"""KD + pruning hyperparameter search engine."""
