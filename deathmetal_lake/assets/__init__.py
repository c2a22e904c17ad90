"""The lake's assets, one module per layer."""
