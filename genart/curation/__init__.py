"""The stages of `python -m genart.curate`: features, clusters, contact sheets, book."""
