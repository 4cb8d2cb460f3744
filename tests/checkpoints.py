"""Reading a run's final checkpoint in a test, whatever devices or processes wrote it."""

import os

import jax
import orbax.checkpoint as ocp


def final_checkpoint(workdir):
  """(step, leaves) of the newest checkpoint in `workdir/checkpoints`, on one local device.

  Restoring with an explicit single-device target lets a checkpoint written by a sharded
  (e.g. two-process) run be read by a process with a different device topology.
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  path = os.path.join(ckpt_dir, str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return step, jax.tree.leaves(checkpointer.restore(path, target))
