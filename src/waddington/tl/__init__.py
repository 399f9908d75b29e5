"""Tools: the methods, each writing its results into AnnData slots."""
