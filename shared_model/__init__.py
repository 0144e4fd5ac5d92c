"""What merchants and the coordinator share, pure PyTorch: data (the ground floor), features, the model, training, privacy."""
