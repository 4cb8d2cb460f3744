"""Segmentation targets: mIoU (mmseg convention), training-free MaskCLIP, a dense head."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lib import downstream as ds


def test_miou_of_a_tiny_confusion_example():
  target = np.array([[0, 0, 1], [1, 2, 2]])
  pred = np.array([[0, 1, 1], [1, 2, 0]])
  confusion = ds.confusion_matrix(pred, target, 4)
  np.testing.assert_array_equal(confusion[:3, :3], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
  miou, iou = ds.mean_iou(confusion)
  # class 0: TP 1, union 3; class 1: TP 2, union 3; class 2: TP 1, union 2; class 3 absent.
  np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
  assert np.isnan(iou[3])
  assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_confusion_accumulates_and_ignores():
  a = ds.confusion_matrix([0, 1], [0, 255], 2, ignore_index=255)
  np.testing.assert_array_equal(a, [[1, 0], [0, 0]])
  with pytest.raises(ValueError, match=r'target must hold labels in \[0, 2\)'):
    ds.confusion_matrix([0, 1], [0, 2], 2)
  with pytest.raises(ValueError, match='same shape'):
    ds.confusion_matrix([0, 1], [0], 2)
  with pytest.raises(ValueError, match='empty'):
    ds.mean_iou(np.zeros((3, 3)))


def _tokens_with_a_square() -> jnp.ndarray:
  """[1, 4, 4, 3] tokens: background along e0, class-2 object (e2) in the top-left 2x2."""
  tokens = np.tile(np.array([1.0, 0.1, 0.0], np.float32), (1, 4, 4, 1))
  tokens[0, :2, :2] = [0.0, 0.1, 1.0]
  return jnp.asarray(tokens)


def test_maskclip_with_a_background_prompt():
  text = jnp.eye(3)                                 # rows: background, class 1, class 2
  labels = ds.maskclip_segment(_tokens_with_a_square(), text, size=(8, 8))
  assert labels.shape == (1, 8, 8)
  assert (labels[0, :3, :3] == 2).all() and (labels[0, 5:, 5:] == 0).all()


def test_maskclip_with_a_threshold():
  text = jnp.eye(3)[1:]                             # rows: class 1 (e1), class 2 (e2)
  labels = ds.maskclip_segment(_tokens_with_a_square(), text, size=(8, 8),
                               background_threshold=0.5)
  assert (labels[0, :3, :3] == 2).all() and (labels[0, 5:, 5:] == 0).all()
  with pytest.raises(ValueError, match='text_embeddings must have E=3'):
    ds.maskclip_segment(_tokens_with_a_square(), jnp.eye(2), size=(8, 8))
  with pytest.raises(ValueError, match=r'patch_tokens must be a float array \[B, h, w, E\]'):
    ds.maskclip_segment(jnp.ones((1, 16, 3)), text, size=(8, 8))


def test_maskclip_miou_with_prototype_prompts(encoder, block_data, block_prototypes):
  _, test = block_data
  # Row 0 stands for the background prompt, rows 1-3 for the colours' prompts.
  result = ds.maskclip_miou(encoder.encode, encoder.variables, block_prototypes, test,
                            num_classes=4)
  assert result['mIoU'] > 0.6 and result['IoU'].shape == (4,), result


def test_dense_head_learns(encoder, block_data, shapes, tmp_path):
  train, test = block_data
  head = ds.DenseHead(num_classes=4)
  state = ds.fit_head(head, encoder.encode, encoder.variables, train, num_steps=100,
                      batch_size=32, seed=0, workdir=str(tmp_path), learning_rate=0.1)
  result = ds.head_miou(head, encoder.encode, state.params, test)
  background = 1 - test.arrays['segmentation'].astype(bool).mean()
  assert result['mIoU'] > 0.6 > background / 4, result   # all-background scores background / 4
  with pytest.raises(ValueError, match=r"\['segmentation'\] must lie in \[0, 4\)"):
    ds.fit_head(head, encoder.encode, encoder.variables, shapes[0], num_steps=1, batch_size=32,
                seed=0, workdir=str(tmp_path / 'bad'))
