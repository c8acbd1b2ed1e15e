"""What a model is trained to do: ``segment`` (pixel classes) or ``denoise`` (clean image from a corrupted
one).

A task supplies the model's inputs and targets, the loss, and the validation metrics; the training
loop (:mod:`segpipe.training.trainer`) is the same for every task.
"""

from segpipe.tasks.base import Task, TaskName

__all__ = ["Task", "TaskName"]
