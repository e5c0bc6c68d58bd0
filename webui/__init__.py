"""LMDeploy Console: quantize, serve, chat, call tools and watch GPU memory from one browser page."""

__version__ = "0.1.0"
