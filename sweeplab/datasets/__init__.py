"""Readers (one module per data format) and the preparation done once per sweep."""
