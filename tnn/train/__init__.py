"""Distributed training, without Ray: the global-batch loss over torch.distributed (the only
module that imports it), checkpoint files, the training job's typed config and its fold plan.
The Ray side that drives them is `tnn.ray.train_loop`."""
