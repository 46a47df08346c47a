"""Hydra entry points (``python experiments/<name>.py``) and the run plumbing they share."""
