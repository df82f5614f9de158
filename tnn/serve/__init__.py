"""What a trained model becomes: torch.export programs, embedding shards (the gallery index),
exact and IVF top-k search, and the query helpers `jobs.query` uses."""
