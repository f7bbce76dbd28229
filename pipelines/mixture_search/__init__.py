"""CLIMB-style mixture search: cluster the pool, train tiny proxies on candidate mixtures, fit a predictor."""
