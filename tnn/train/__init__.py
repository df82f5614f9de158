"""Distributed training, without Ray: the global-batch loss over torch.distributed (the only
module that imports it), checkpoint files, the training job's typed config and its fold plan;
for tnn-label its global-batch loss (`proxy`), its readout after distributed training
(`label_readout`) and the spec of encoders beyond affine stages (`module_spec`).
The Ray side that drives them is `tnn.ray.train_loop` (and `tnn.ray.label_loop`)."""
