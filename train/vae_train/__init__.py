"""mnist-vae's training side: the seed VAE in PyTorch, MNIST data, training loop, checkpoints."""
