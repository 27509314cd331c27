"""Models: the temporal protocol, candidate retrieval, the ranker and its features, metrics, the registry."""
