"""Test-session setup: 8 fake CPU devices, so sharded sweeps run as they would on 8 chips."""

import os

# Must happen before jax initialises its backends. Each flag is appended unless XLA_FLAGS
# already sets it (launch/test.sh exports the YNNPACK one through launch/_env.sh, which
# explains it: XLA's own convolutions instead of YNNPACK's slower ones on CPU).
_FLAGS = ('--xla_force_host_platform_device_count=8',
          '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')
_user = os.environ.get('XLA_FLAGS', '')
os.environ['XLA_FLAGS'] = ' '.join(
    [_user, *(f for f in _FLAGS if f.split('=')[0] not in _user)]).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the environment above)

# As equinox's tests do: implicit dtype promotion (e.g. float32 array + float64 numpy array)
# is an error, so a silent upcast or downcast in a kernel shows up here.
jax.config.update('jax_numpy_dtype_promotion', 'strict')
