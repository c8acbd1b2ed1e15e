"""Xception-style U-Net (the Keras Oxford-Pets segmentation example): options in ``config``, the
network in ``model``."""
