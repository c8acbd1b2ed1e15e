"""segmentation_models_pytorch baselines: options in ``config``, the wrapper in ``model``."""
