"""Latent Space Dynamics: networks, model and guide, walks and training (torch/pyro only)."""
