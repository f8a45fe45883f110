"""What crosses the border of the ecosystem: single-file checkpoints, LoRA key layouts, A1111 infotext.

Pure functions over state dicts and text where possible, so each format is tested without a model load.
"""
