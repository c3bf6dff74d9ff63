"""datapipe: genomes -> tokens -> WebDataset shards, and the training loader.

The bottom layer of dnafm: it imports nothing from kernels, trainer, eval or cluster. The seams every
layer shares (configs, errors, atomic files, logging, tracking, the version) are in ``datapipe.common``.
"""
