"""Training on a lent GPU machine without the rest of the stack, and importing its results.

``run`` trains every architecture on a CamVid pack with segpipe's own loop and writes a compact output folder
(no MLflow, DVC or great-expectations needed); ``import_run`` validates such a folder, re-evaluates its best
model on the CPU and logs it into MLflow and the model registry. Modules are imported on their own, so the
GPU side never imports MLflow.
"""
