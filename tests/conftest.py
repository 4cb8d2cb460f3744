"""Test-session setup: 8 fake CPU devices, so sharded sweeps run as they would on 8 chips."""

import os

from launch import xla_setup  # noqa: E402

# Must happen before jax initialises its backends; a flag XLA_FLAGS already sets wins.
xla_setup.add_flags('--xla_force_host_platform_device_count=8', xla_setup.YNN_FLAG)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the environment above)

# As equinox's tests do: implicit dtype promotion (e.g. float32 array + float64 numpy array)
# is an error, so a silent upcast or downcast in a kernel shows up here.
jax.config.update('jax_numpy_dtype_promotion', 'strict')
