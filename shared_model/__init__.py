"""What merchants and the coordinator share: event data, features, the profile Transformer, training and privacy."""
