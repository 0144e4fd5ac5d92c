"""Many merchants on one machine: scenarios and reports on Flower's simulation engine."""
