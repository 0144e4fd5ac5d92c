"""The coordinator's console: rounds as they happen, merchants connected and refused, quality, epsilon."""
