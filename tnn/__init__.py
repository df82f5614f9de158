"""tnn: audio-visual cross-modal retrieval with deep triplet networks and cluster-CCA.

The core (`tnn.sources`, `tnn.folds`, `tnn.metrics`, `tnn.cca`, `tnn.model`, `tnn.mining`,
`tnn.losses`, `tnn.pipelines`) imports only numpy, torch and the standard library. Ray, MLflow
and torch.distributed each live in one edge module (`tnn.data`, `tnn.train_loop`,
`tnn.tracking`, `tnn.distributed`).
"""

__version__ = "0.1.0"
