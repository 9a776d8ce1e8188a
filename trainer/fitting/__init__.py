"""From enrolled samples to a bundle: embeddings with augmentation, the gallery,
fitting and choosing a head, building and reporting a bundle."""
