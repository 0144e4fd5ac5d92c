"""Merchant side: the Flower ClientApp, the merchant's state and keys, the daemon, and the on-site service."""
