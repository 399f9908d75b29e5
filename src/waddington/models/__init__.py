"""Torch/Pyro models. Nothing under this package imports anndata or scanpy."""
