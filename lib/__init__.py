"""A JAX library of pure, jit/vmap-able kernels for the security of foundation models."""
