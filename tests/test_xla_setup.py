"""launch/xla_setup.py: the project's XLA flags are added once and never override the user's."""

import os
import subprocess
import sys

from launch import xla_setup


def test_the_flag_is_accepted_and_gives_xla_its_own_convolutions():
  """This jaxlib accepts the flag (an unknown one aborts the process), and it takes a lone
  convolution out of YNNPACK."""
  code = ('import jax, jax.numpy as jnp\n'
          'conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", '
          'dimension_numbers=("NHWC", "HWIO", "NHWC"))\n'
          'x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 64))\n'
          'print(jax.jit(conv).lower(x, w).compile().as_text().count("__ynn_fusion"))\n')
  counts = {}
  for flags in ('', xla_setup.YNN_FLAG):
    run = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, XLA_FLAGS=flags),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    counts[flags] = int(run.stdout.split()[-1])
  assert counts == {'': 1, xla_setup.YNN_FLAG: 0}, counts


def test_adds_the_flag_once_after_the_users_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  once = xla_setup.add_project_flags(env)
  assert once == f'--xla_force_host_platform_device_count=2 {xla_setup.YNN_FLAG}'
  assert xla_setup.add_project_flags(env) == once


def test_a_value_the_user_set_wins():
  env = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type='}
  assert xla_setup.add_project_flags(env) == '--xla_cpu_experimental_ynn_fusion_type='


def test_works_without_xla_flags():
  env = {}
  assert xla_setup.add_flags('--a=1', '--b=2', environ=env) == '--a=1 --b=2'
