"""pglab: measure, rather than assume, what policy-gradient theory says.

The ``pglab`` package holds the mathematics only: MDPs, the exact oracle, sampling,
estimators, policies, rollouts and the update loop. It imports neither Hydra nor W&B
and writes no result files; ``experiments/`` wires it to configs and trackers, and
``analysis/`` reads what the experiments stored.
"""

__version__ = "0.1.0"
