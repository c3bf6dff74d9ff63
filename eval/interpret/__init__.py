"""Interpretation of trained models: attention (``attention``), motif discovery from attention (``motifs``,
``jaspar``, ``logos``), sequence embeddings (``embed``) and variant effects (``variants``). The command
lines are in ``cli.py``; a fine-tuned classifier is read through ``eval.saved_model.load_checkpoint``."""
