"""Plots that read the slots written by the tools."""
