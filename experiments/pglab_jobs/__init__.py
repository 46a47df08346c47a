"""Run plumbing shared by every experiment: storage, metadata, W&B, resume, progress.

Nothing here does mathematics; ``pglab`` does. Nothing in ``pglab`` imports this.
"""
