"""datapipe: genomes -> tokens -> WebDataset shards, and the training loader.

The bottom layer of dnafm: it imports nothing from kernels, trainer, eval or cluster, and holds
the small utilities every layer shares (config dataclasses, logging, experiment tracking).
"""

__version__ = "0.1.0"
