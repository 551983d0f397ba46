"""Stage 3, training: the epoch loop (CE + KD loss, precision, augmentation), the KD losses, and the CPU-kernel guards
it runs under.
"""
