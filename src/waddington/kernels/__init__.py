"""CellRank kernels built from our results."""
