"""pglab's batched Hydra launcher (``hydra/launcher=batched``): see ``batched_launcher``."""
