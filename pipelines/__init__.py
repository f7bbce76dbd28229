"""Web crawl -> pretraining data -> annealed model. See README.md and dvc.yaml."""

__version__ = "0.1.0"
