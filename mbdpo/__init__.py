"""MBDPO: Model-Based Diffusion Policy Optimization (arXiv 2605.26282)."""
__version__ = "0.1.0"
