"""FCN-32s/16s/8s architectures: options in ``config``, the network in ``model``."""
