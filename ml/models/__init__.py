"""Models: point-in-time training sets, training, evaluation, the MLflow registry and server."""
