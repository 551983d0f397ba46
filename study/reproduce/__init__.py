"""Stage 8, reproduction: re-train a chosen trial on fresh seeds, confirmation seeds for the front, and export.
"""
