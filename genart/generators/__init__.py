"""Image generators: each turns trainable parameters θ into an image (1, 3, H, W) in [0, 1]."""
