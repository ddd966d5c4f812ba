"""Reusable building blocks shared by components."""
