"""Detection targets: COCO mAP through pycocotools, training-free regions, CenterNet-lite."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lib import downstream as ds

GT = np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]], np.float32)   # 1 image, 2 boxes
GT_LABELS = np.array([[0, 1]])


def _one(boxes, scores, labels) -> ds.Detections:
  return ds.Detections(np.asarray([boxes], np.float32), np.asarray([scores], np.float32),
                       np.asarray([labels], np.int32))


def test_perfect_boxes_score_one():
  result = ds.coco_map(GT, GT_LABELS, _one(GT[0], [0.9, 0.8], [0, 1]), image_size=(20, 20),
                       num_classes=2)
  assert result == pytest.approx({'mAP': 1.0, 'AP50': 1.0, 'AP75': 1.0})


def _direct_pycocotools(tmp_path) -> float:
  """The shifted-box case through pycocotools' own file-based entry points."""
  path = tmp_path / 'gt.json'
  path.write_text(json.dumps({
      'images': [{'id': 1, 'height': 20, 'width': 20}],
      'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 10, 10],
                       'area': 100, 'iscrowd': 0}],
      'categories': [{'id': 1, 'name': 'a'}]}))
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(path))
    dt = gt.loadRes([{'image_id': 1, 'category_id': 1, 'bbox': [2, 0, 10, 10], 'score': 0.9}])
    evaluator = COCOeval(gt, dt, 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats[0]


def test_shifted_box_matches_a_direct_pycocotools_call(tmp_path):
  # 10x10 px box shifted 2 px: IoU = 80 / 120 = 2/3, a match at IoU 0.50, 0.55, 0.60, 0.65
  # of the ten thresholds, so mAP = 0.4 and AP50 = 1.
  gt = np.array([[[0.0, 0.0, 0.5, 0.5]]], np.float32)
  result = ds.coco_map(gt, [[0]], _one([[0.0, 0.1, 0.5, 0.6]], [0.9], [0]), image_size=(20, 20),
                       num_classes=1)
  assert result['mAP'] == pytest.approx(0.4)
  assert result['AP50'] == pytest.approx(1.0) and result['AP75'] == 0.0
  assert result['mAP'] == pytest.approx(_direct_pycocotools(tmp_path))


def test_coco_map_edge_cases_and_errors():
  none = _one(np.zeros((1, 4)), [0.0], [-1])
  assert ds.coco_map(GT, GT_LABELS, none, image_size=(20, 20), num_classes=2)['mAP'] == 0.0
  with pytest.raises(ValueError, match='no box'):
    ds.coco_map(GT, [[-1, -1]], none, image_size=(20, 20), num_classes=2)
  with pytest.raises(ValueError, match='gt_labels must lie'):
    ds.coco_map(GT, [[0, 2]], none, image_size=(20, 20), num_classes=2)
  with pytest.raises(ValueError, match='y1 >= y0'):
    ds.coco_map(GT[:, :, ::-1], GT_LABELS, none, image_size=(20, 20), num_classes=2)


def test_zero_shot_detect_boxes_a_region_of_similar_patches():
  tokens = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (1, 4, 4, 1))
  tokens[0, :2, 1:3] = [0.0, 0.0, 1.0]                     # category 1 (e2) in a 2x2 region
  text = np.eye(3, dtype=np.float32)[1:]                   # category 0 = e1, category 1 = e2
  found = ds.zero_shot_detect(tokens, text, background_threshold=0.5, max_detections=3)
  np.testing.assert_allclose(found.boxes[0, 0], [0.0, 0.25, 0.5, 0.75])
  assert found.labels[0].tolist() == [1, -1, -1] and found.scores[0, 0] == pytest.approx(1.0)


def test_zero_shot_map_with_prototype_queries(encoder, block_data, block_prototypes):
  _, test = block_data
  # Row 0 is the background "prompt", rows 1-3 the colours.
  result = ds.zero_shot_map(encoder.encode, encoder.variables, block_prototypes, test,
                            num_classes=3)
  assert result['AP50'] > 0.2, result


def test_box_head_learns(encoder, block_data, tmp_path):
  train, test = block_data
  head = ds.BoxHead(num_classes=3, hidden=32)
  state = ds.fit_head(head, encoder.encode, encoder.variables, train, num_steps=60,
                      batch_size=32, seed=0, workdir=str(tmp_path), learning_rate=1e-2)
  result = ds.head_map(head, encoder.encode, state.params, test)
  assert result['AP50'] > 0.5 and result['mAP'] > 0.1, result
