"""Fusion: text and image embeddings in, the final 27-way class scores out."""
