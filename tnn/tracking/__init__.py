"""MLflow, and only here: runs and their metrics, registered encoders (pyfunc), aliases and
promotion, evaluation of a registered model."""
