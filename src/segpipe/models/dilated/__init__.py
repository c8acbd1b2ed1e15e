"""Dilated (atrous) context network: options in ``config``, the network in ``model``."""
