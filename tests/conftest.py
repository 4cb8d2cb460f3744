"""Test-session setup: 8 fake CPU devices, so sharded sweeps run as they would on 8 chips."""

import os

# Must happen before jax initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
