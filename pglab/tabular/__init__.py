"""The tabular world: finite-horizon MDPs where the exact gradient is computable.

``mdp`` (the MDP), ``zoo`` (named MDPs and files), ``exact`` (J, V, Q and grad J by the
policy-gradient theorem), ``policy`` (softmax over logits), ``sampling`` (trajectories),
``estimates`` (sampled per-trajectory gradients and batch estimates), ``ascent``
(gradient ascent with exact or sampled gradients), ``calibration`` (the unbiasedness
test's error rates against the exact truth).
"""
