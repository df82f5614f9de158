"""The framework-free core: distances, triplet mining, losses, closed-form and differentiable
cluster-CCA, retrieval metrics, the two-branch model, the encoder and the folds. numpy, torch
and the standard library only; every loss, miner and metric has a brute-force twin in
tests/reference."""
