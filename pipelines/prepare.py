"""DVC stage `prepare`: generate or import the dataset into data/prepared (manifest + array cache).

With `prepare.download: true` (camvid, oxford_pets, voc, ade20k) the dataset is first fetched from its
official source into `prepare.root`, once (cityscapes needs a login: it is refused, saying where to get it);
nothing is downloaded otherwise."""

import sys

from segpipe.data.prepare import prepare_dataset
from segpipe.stages.entry import stage_main


def run(params, paths, _args):
    if params.prepare.download:
        from segpipe.data.download import download_dataset

        download_dataset(params.prepare.dataset, params.prepare.root_path())
    return prepare_dataset(params.prepare, paths.prepared)


def main(argv=None) -> int:
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
