"""Synthetic shops: generated landing data, and the same delivered as real exports look."""
