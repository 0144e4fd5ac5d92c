"""fedprofile: federated, privacy-preserving user profiling for e-commerce."""

__version__ = "0.1.0"
