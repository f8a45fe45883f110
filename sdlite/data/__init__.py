"""Training data: examples found in folders and tables (Parquet, Arrow, the hub), images read robustly,
captions, aspect-ratio buckets and batch order, and the synthetic shapes world."""
