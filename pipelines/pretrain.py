"""DVC stage `pretrain@<architecture>`: denoising pretraining of the architecture's encoder, on the training
images and those under `pretrain.unlabelled_root`, when `pretrain.architectures` lists it (written to
models/pretrain/<architecture>/encoder.safetensors, which `train.models.<architecture>.init: pretrain` starts
from); otherwise a record saying it is not pretrained."""

import sys

from segpipe.stages.entry import stage_main
from segpipe.stages.pretrain import run_pretrain


def main(argv=None) -> int:
    return stage_main(__doc__, pretrain, argv, with_architecture=True)


def pretrain(params, paths, args):
    return run_pretrain(params, args.architecture, paths)


if __name__ == "__main__":
    sys.exit(main())
