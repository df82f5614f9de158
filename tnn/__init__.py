"""tnn: audio-visual cross-modal retrieval with deep triplet networks and cluster-CCA.

Subpackages, lowest layer first; a module imports only its own subpackage or a lower layer
(`tests/test_layout.py` checks it, lazy imports included):

    errors, config  leaves: user-actionable errors; typed configs from YAML presets + overrides
    core/      numpy and torch only: distances, mining, losses, (cluster-)CCA, metrics, folds,
               the two-branch model and the fitted `Encoder`
    data/      `Pairs` and the data sources, the shard format on local disk or S3, reading and
               writing shard sets (pyarrow and boto3 imported inside functions)
    methods/   the registry of retrieval methods (`METHODS`), the paper's TNN pipelines, linear,
               kernel and deep CCA, the one epoch loop with early stopping, the K-fold protocol
               and its report
    train/     a Ray Train run's config, data split and checkpoints; `distributed`, the one
               `torch.distributed` user (global-batch losses under DDP)
    serve/     exported encoder branches, the embedding index, exact and IVF top-k search
    tracking/  MLflow, only here: runs, the model registry and pyfunc encoders, evaluation and
               promotion of registered models, queries through registered encoders
    ray/       Ray, only here: Ray Data readers, the Train loop, Tune, the embedding pipeline,
               and `compat`, every private Ray attribute in one place

Importing anything outside `tnn.ray` and `tnn.tracking` loads none of ray, mlflow, boto3 or
pyarrow. The entry points are `jobs/` (`python -m jobs.<name>`); nothing in tnn imports them.
"""

__version__ = "0.1.0"
