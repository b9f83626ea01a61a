"""Baseline servers that `make bench` compares ocm-control with."""
