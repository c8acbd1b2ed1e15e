"""Training on another machine: ``pack`` a bundle here, ``run`` it there, ``import`` its results here.

``bundle`` writes the bundle (code, prepared data, params, wheels, bootstrap, manifest); ``run`` trains and
tests on the host with the pipeline's own stages and needs no MLflow, DVC or great-expectations; ``importer``
checks an output folder, re-evaluates its best model and logs and registers it in MLflow. ``manifest`` (sha256
of every file, optional splitting into parts) serves both directions.
"""
