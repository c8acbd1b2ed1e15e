"""SegNet architecture: options in ``config``, the network in ``model``."""
