"""Ray, and only here: Ray Data over feature shards, the driver's data plan, the Ray Train
worker loop, Tune searches, the embedding actor pipeline, connecting to a cluster, and
`compat`: every private Ray attribute in one module."""
