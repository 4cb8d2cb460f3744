"""lib.models.weights: safetensors files written by PyTorch, name maps, shape checks, reports.

The parity test saves a tiny PyTorch network equal to our 'cnn' (no batch norm) with
`safetensors.torch.save_file`, loads it through a name map, and compares logits.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from model_cases import key

from lib import models
from lib.models import weights

SHAPE, CLASSES, WIDTHS = (8, 8, 3), 3, (4, 4, 6)
MODEL = models.get_model('cnn', input_shape=SHAPE, num_classes=CLASSES, widths=WIDTHS)


class TorchCNN(torch.nn.Module):
  """PyTorch mirror of `SmallCNN` without batch norm (NCHW)."""

  def __init__(self):
    super().__init__()
    chans = (SHAPE[-1], *WIDTHS)
    self.convs = torch.nn.ModuleList(
        torch.nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(len(WIDTHS)))
    self.head = torch.nn.Linear(WIDTHS[-1], CLASSES)

  def forward(self, x):
    for i, conv in enumerate(self.convs):
      x = torch.relu(conv(x))
      if i < len(self.convs) - 1:
        x = torch.nn.functional.max_pool2d(x, 2)
    return self.head(x.mean((2, 3)))


def cnn_names(name: str):
  """PyTorch `TorchCNN` tensor name -> (our variables path, transform)."""
  parts = name.split('.')
  layer = f'convs/{parts[1]}' if parts[0] == 'convs' else parts[0]
  if parts[-1] == 'bias':
    return f'params/{layer}/bias'
  return (f'params/{layer}/kernel',
          weights.torch_conv if parts[0] == 'convs' else weights.torch_linear)


@pytest.fixture(scope='module')
def torch_file(tmp_path_factory):
  torch.manual_seed(0)
  net = TorchCNN().eval()
  path = tmp_path_factory.mktemp('weights') / 'cnn.safetensors'
  safetensors.torch.save_file(net.state_dict(), str(path))
  return net, path


def tensors_of(path) -> dict[str, np.ndarray]:
  return dict(safetensors.numpy.load_file(str(path)))


def test_torch_cnn_parity(torch_file):
  net, path = torch_file
  variables, report = weights.load_safetensors(path, cnn_names, MODEL.abstract_variables)
  assert report == weights.LoadReport((), ())
  assert variables['params']['convs'][0]['kernel'].shape == (3, 3, 3, 4)
  x = np.random.default_rng(0).uniform(size=(2, *SHAPE)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(MODEL.apply)(variables, x).logits)
  assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5


def test_shape_mismatch_names_the_first_tensor_and_both_shapes(tmp_path):
  tensors = {'head.weight': np.zeros((CLASSES, 5), np.float32),
             'convs.0.weight': np.zeros((4, 3, 3, 3), np.float32)}
  path = tmp_path / 'bad.safetensors'
  safetensors.numpy.save_file(tensors, str(path))
  with pytest.raises(ValueError, match=r"'head.weight' has shape \(5, 3\) after its transform; "
                                       r"the model's 'params/head/kernel' has shape \(6, 3\)"):
    weights.load_safetensors(path, cnn_names, MODEL.abstract_variables)


def test_missing_and_unexpected_are_listed(torch_file):
  tensors = tensors_of(torch_file[1])
  del tensors['convs.1.bias']
  tensors['extra.running_mean'] = np.zeros(3, np.float32)
  names = lambda n: None if n.startswith('extra') else cnn_names(n)
  with pytest.raises(ValueError, match=r"missing \['params/convs/1/bias'\], unexpected "
                                       r"\['extra.running_mean'\]"):
    weights.load_variables(tensors, names, MODEL.abstract_variables)
  # A partial load keeps the base variables' values and reports what it left out.
  base = MODEL.init(key(0))
  loaded, report = weights.load_variables(tensors, names, base, partial=True)
  assert report == weights.LoadReport(('params/convs/1/bias',), ('extra.running_mean',))
  np.testing.assert_array_equal(loaded['params']['convs'][1]['bias'],
                                base['params']['convs'][1]['bias'])
  np.testing.assert_array_equal(loaded['params']['head']['bias'], tensors['head.bias'])
  # Into abstract variables a partial load has nothing to fill the gap with.
  with pytest.raises(ValueError, match=r"leaves \['params/convs/1/bias'\] without values"):
    weights.load_variables(tensors, names, MODEL.abstract_variables, partial=True)
  # Ignored tensors are neither loaded nor reported.
  _, report = weights.load_variables(tensors, names, base, partial=True, ignore=('extra.*',))
  assert report.unexpected == ()


def test_mapping_name_map_and_dtype_cast(torch_file):
  tensors = {k: v.astype(np.float64) for k, v in tensors_of(torch_file[1]).items()}
  mapping = {name: cnn_names(name) for name in tensors}
  loaded, _ = weights.load_variables(tensors, mapping, MODEL.abstract_variables)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(loaded))
  np.testing.assert_allclose(loaded['params']['head']['kernel'], tensors['head.weight'].T)


@pytest.mark.parametrize('name_map, message', [
    ({'head.weight': 'params/head/weight'}, "sends 'head.weight' to 'params/head/weight', "
                                            'which the model does not have'),
    ({'head.bias': 'params/head/bias', 'head.weight': 'params/head/bias'}, 'two tensors'),
    ({'head.bias': ('params/head/bias', 'T')}, 'expected a variables path or'),
])
def test_bad_name_maps_raise(torch_file, name_map, message):
  with pytest.raises(ValueError, match=message):
    weights.load_variables(tensors_of(torch_file[1]), name_map, MODEL.abstract_variables,
                           partial=True)


def test_missing_file_raises(tmp_path):
  with pytest.raises(ValueError, match='is not a file'):
    weights.read_safetensors(tmp_path / 'nope.safetensors')


def test_torch_layouts():
  assert weights.torch_linear(np.zeros((5, 3))).shape == (3, 5)
  w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)   # O, I, H, W
  assert weights.torch_conv(w)[1, 2, 0, 1] == w[1, 0, 1, 2]
