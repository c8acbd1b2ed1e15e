"""U-Net architecture: options in ``config``, the network in ``model``."""
