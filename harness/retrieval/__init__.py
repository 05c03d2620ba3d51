"""Retrieval: from encoded features to ranks (scoring in tiles, top-k and two-stage reranking, post-processing,
metrics, FAISS indexes, the feature cache)."""
