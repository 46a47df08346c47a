"""Figures and tables from stored results only (never imports training code).

``load`` reads job directories by the result contract in ``pglab.schema`` (the one
dependency-free pglab module imported here), ``stats`` holds the uncertainty over runs,
``figures`` the shared plot helpers, ``report`` the HTML report (one module per
experiment's section; ``python -m analysis.report``) and ``wandb_source`` reads W&B runs.
"""
