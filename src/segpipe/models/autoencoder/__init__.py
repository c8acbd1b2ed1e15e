"""Convolutional autoencoder architecture: options in ``config``, the network in ``model``."""
