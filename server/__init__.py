"""Coordinating side: the Flower ServerApp that aggregates, checkpoints and publishes the global model."""
