"""Merchant side: the Flower ClientApp and the merchant daemon (federation issue)."""
