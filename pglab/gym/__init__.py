"""The gymnasium world: discrete-action envs, neural policies, REINFORCE training.

``policies`` (categorical MLP / linear policies), ``rollouts`` (exactly N complete
episodes from a vector env), ``gradients`` (surrogate loss, per-episode gradients),
``training`` (the update loop), ``gradient_quality`` (batch gradients against a
large-sample reference).
"""
