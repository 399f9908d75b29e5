"""Preprocessing: priors and inputs computed from an AnnData."""
