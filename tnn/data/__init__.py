"""Data in and out, without Ray: `Pairs` and their validation, the sources (bundled UCI
views, npz, VEGAS clip folders, synthetic), S3/local storage, Parquet feature shards with
their manifest, readers and writers, and Arrow <-> numpy batches."""
