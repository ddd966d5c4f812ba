"""Compositions of components into whole models."""
