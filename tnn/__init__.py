"""tnn: audio-visual cross-modal retrieval with deep triplet networks and cluster-CCA.

The core (`tnn.data.sources`, `tnn.core.folds`, `tnn.core.metrics`, `tnn.core.cca`, `tnn.core.model`, `tnn.core.mining`,
`tnn.core.losses`, `tnn.methods.tnn`) imports only numpy, torch and the standard library. Ray, MLflow
and torch.distributed each live in one edge module (`tnn.ray.dataset`, `tnn.ray.train_loop`,
`tnn.tracking.runs`, `tnn.train.distributed`).
"""

__version__ = "0.1.0"
