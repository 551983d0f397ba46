"""Stage 4, the teacher: trained by recipe or the user's own, its cache of logits, and the input preprocessing it was
trained on.
"""
