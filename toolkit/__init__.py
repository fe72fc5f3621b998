"""rtk, the residual-learning toolkit: train, export, benchmark and analyse CIFAR-scale CNNs."""

__version__ = "0.1.0"
