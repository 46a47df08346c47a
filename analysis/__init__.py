"""Figures and tables from stored results only (never imports training code)."""
