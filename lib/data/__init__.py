"""Data sets as numpy batches: embedded offline sets ('digits', 'shapes', 'bios'), TFDS, and
Bias in Bios from local files ('bias_in_bios').

    from lib import data
    train = data.get_dataset('shapes', 'train', image_size=32, seed=0)
    batch = data.batch_at(train, step, batch_size=128, seed=0)   # stateless: (seed, step)
    for batch in data.eval_batches(data.get_dataset('shapes', 'test'), 256): ...

A batch is a dict of numpy arrays: 'image' float32 [B, H, W, C] in [0, 1], 'label' int32
[B], and per data set optional annotations ('mask', 'segmentation', 'boxes', 'box_labels',
'caption', 'question', 'answer'), documented in `lib.data._dataset`. The text sets 'bios' and
'bias_in_bios' have no image: 'text' str [B], 'label', 'profession', 'gender' int32 [B]
(`lib.data._bios_dataset`).
"""

from lib.data._batching import batch_at, eval_batches, iterate, steps_per_epoch
from lib.data._dataset import ArrayDataset, Batch, Dataset
from lib.data._registry import NAMES, get_dataset

__all__ = [
    'ArrayDataset',
    'Batch',
    'Dataset',
    'NAMES',
    'batch_at',
    'eval_batches',
    'get_dataset',
    'iterate',
    'steps_per_epoch',
]
