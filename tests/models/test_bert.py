"""BERT: parity with Hugging Face `transformers` (BertModel, BertForSequenceClassification,
BertForMaskedLM) through `save_pretrained` safetensors folders, the loader's checks, the
config, the inputs with token types, and the masked-LM corruption.

The PyTorch models are tiny random twins of `bert.BERT_TEST` with every parameter drawn at
random (HF initialises LayerNorms to 1/0 and biases to 0, which would hide mapping bugs).
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import optax
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx
from model_cases import key

from lib.models import bert, bert_weights
from lib.models.weights import LoadReport

CONFIG = bert.BERT_TEST
LAYERS = CONFIG.num_hidden_layers
# Three sequences of lengths 7, 4 and 2 (padded with id 0), segments A and B.
IDS = np.array([[2, 11, 12, 13, 3, 14, 3], [2, 15, 16, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0]],
               np.int32)
MASK = (IDS != 0).astype(np.int32)
TYPES = np.array([[0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 0], [0] * 7], np.int32)


def hf_config(**overrides) -> transformers.BertConfig:
  fields = {f: getattr(CONFIG, f) for f in ('vocab_size', 'hidden_size', 'num_hidden_layers',
                                             'num_attention_heads', 'intermediate_size',
                                             'max_position_embeddings', 'type_vocab_size')}
  return transformers.BertConfig(**{**fields, **overrides})


def randomised(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
  """`model` in eval mode with every parameter N(0, std^2) (LayerNorm scales U[0.5, 1.5])."""
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'LayerNorm.weight' in name:
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0.0, std)
  return model.eval()


def save(model: torch.nn.Module, folder) -> str:
  model.save_pretrained(str(folder), safe_serialization=True)
  return str(folder)


def torch_inputs(types: bool = True) -> dict[str, torch.Tensor]:
  out = {'input_ids': torch.from_numpy(IDS).long(), 'attention_mask': torch.from_numpy(MASK)}
  return {**out, 'token_type_ids': torch.from_numpy(TYPES).long()} if types else out


def ours_inputs(types: bool = True) -> dict[str, np.ndarray]:
  out = {'input_ids': IDS, 'attention_mask': MASK}
  return {**out, 'token_type_ids': TYPES} if types else out


def rel_err(got, want) -> float:
  want = np.asarray(want)
  return float(np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want))


def run(ckpt: bert_weights.BertCheckpoint, types: bool = True):
  with jax.default_matmul_precision('highest'):
    return jax.jit(ckpt.model.apply)(ckpt.variables, ours_inputs(types))


@pytest.fixture(scope='module')
def encoder(tmp_path_factory):
  """(HF BertModel, its save_pretrained folder)."""
  net = randomised(transformers.BertModel(hf_config()))
  return net, save(net, tmp_path_factory.mktemp('bert'))


@pytest.mark.parametrize('types', [True, False])
def test_hidden_states_and_pooler_match_bert_model(encoder, types):
  net, folder = encoder
  ckpt = bert_weights.load_bert(folder, max_len=IDS.shape[1])
  assert ckpt.report == LoadReport((), ()) and ckpt.config == CONFIG
  with torch.no_grad():
    want = net(**torch_inputs(types), output_hidden_states=True)
  out = run(ckpt, types)
  taps = ['embed'] + [f'block{i}' for i in range(LAYERS)]
  assert ckpt.model.tap_names == (*taps, 'features') and len(want.hidden_states) == LAYERS + 1
  errors = [rel_err(out.taps[t], h.numpy()) for t, h in zip(taps, want.hidden_states)]
  errors.append(rel_err(out.features, want.pooler_output.numpy()))
  assert max(errors) <= 1e-5, errors
  np.testing.assert_array_equal(out.taps[taps[-1]], out.taps[f'block{LAYERS - 1}'])
  assert out.logits is None


def test_classifier_matches_bert_for_sequence_classification(tmp_path):
  net = randomised(transformers.BertForSequenceClassification(hf_config(num_labels=3)))
  ckpt = bert_weights.load_bert(save(net, tmp_path), num_classes=3)
  with torch.no_grad():
    want = net(**torch_inputs()).logits.numpy()
  assert rel_err(run(ckpt).logits, want) <= 1e-5


def test_masked_lm_matches_bert_for_masked_lm(tmp_path):
  net = randomised(transformers.BertForMaskedLM(hf_config()))
  folder = save(net, tmp_path)
  with pytest.raises(ValueError, match=r"no \['params/pooler/bias', 'params/pooler/kernel'\]; "
                                       'pass key='):
    bert_weights.load_bert(folder, mlm=True)
  ckpt = bert_weights.load_bert(folder, mlm=True, key=key(0))
  assert ckpt.report.missing == ('params/pooler/bias', 'params/pooler/kernel')
  # Positions 1, 2 and 5 of the first sequence and 1 of the second are to be predicted.
  ids = IDS.copy()
  ids[0, 1], ids[1, 1] = 4, 4
  labels = np.full_like(IDS, bert.IGNORE_INDEX)
  for i, j in ((0, 1), (0, 2), (0, 5), (1, 1)):
    labels[i, j] = IDS[i, j]
  with torch.no_grad():
    want = net(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(MASK),
               token_type_ids=torch.from_numpy(TYPES).long(),
               labels=torch.from_numpy(labels).long())
  logits_and_loss = lambda v, x: (lambda o: (o.logits, bert.mlm_loss(o.logits, labels)))(
      ckpt.model.apply(v, x))
  with jax.default_matmul_precision('highest'):
    logits, loss = jax.jit(logits_and_loss)(ckpt.variables, {**ours_inputs(), 'input_ids': ids})
  assert logits.shape == (*IDS.shape, CONFIG.vocab_size)
  assert rel_err(logits, want.logits.numpy()) <= 1e-5
  np.testing.assert_allclose(loss, want.loss.numpy(), rtol=1e-5)


def test_old_names_buffers_and_pretraining_heads_load_alike(encoder, tmp_path):
  """gamma/beta LayerNorms, int64 position_ids, a 'bert.' prefix, NSP and MLM heads."""
  tensors = dict(safetensors.numpy.load_file(f'{encoder[1]}/model.safetensors'))
  renamed = {'bert.' + k.replace('LayerNorm.weight', 'LayerNorm.gamma')
             .replace('LayerNorm.bias', 'LayerNorm.beta'): v for k, v in tensors.items()}
  renamed['bert.embeddings.position_ids'] = np.arange(32, dtype=np.int64)[None]
  renamed['cls.seq_relationship.weight'] = np.zeros((2, CONFIG.hidden_size), np.float32)
  shutil.copy(f'{encoder[1]}/config.json', tmp_path)
  safetensors.numpy.save_file(renamed, str(tmp_path / 'model.safetensors'))
  old = bert_weights.load_bert(tmp_path)
  assert old.report == LoadReport((), ('cls.seq_relationship.weight',))
  new = bert_weights.load_bert(encoder[1])
  jax.tree.map(np.testing.assert_array_equal, old.variables, new.variables)


def test_sharded_checkpoint_loads(encoder, tmp_path):
  tensors = encoder_tensors(encoder)
  names = sorted(tensors)
  shards = {'model-00001-of-00002.safetensors': names[:10],
            'model-00002-of-00002.safetensors': names[10:]}
  for shard, shard_names in shards.items():
    safetensors.numpy.save_file({n: tensors[n] for n in shard_names}, str(tmp_path / shard))
  index = {'weight_map': {n: shard for shard, ns in shards.items() for n in ns}}
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps(index))
  shutil.copy(f'{encoder[1]}/config.json', tmp_path)
  jax.tree.map(np.testing.assert_array_equal, bert_weights.load_bert(tmp_path).variables,
               bert_weights.load_bert(encoder[1]).variables)


def write_checkpoint(tmp_path, encoder, tensors=None, config=None) -> str:
  """A copy of the encoder's folder with replaced tensors and/or config.json entries."""
  folder = tmp_path / 'ckpt'
  shutil.copytree(encoder[1], folder)
  if tensors is not None:
    safetensors.numpy.save_file(tensors, str(folder / 'model.safetensors'))
  if config is not None:
    saved = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**saved, **config}))
  return str(folder)


def encoder_tensors(encoder) -> dict[str, np.ndarray]:
  return dict(safetensors.numpy.load_file(f'{encoder[1]}/model.safetensors'))


def test_vocabulary_size_mismatch_names_both_numbers(encoder, tmp_path):
  folder = write_checkpoint(tmp_path, encoder)
  with open(f'{folder}/vocab.txt', 'w') as f:
    f.write('\n'.join(f'w{i}' for i in range(90)) + '\n')
  with pytest.raises(ValueError, match='vocab.txt has 90 tokens but the checkpoint\'s word '
                                       'embeddings have 100 rows'):
    bert_weights.load_bert(folder)
  with pytest.raises(ValueError, match='vocab_size has 120 tokens .* have 100 rows'):
    bert_weights.load_bert(encoder[1], vocab_size=120)
  with pytest.raises(ValueError, match='config vocab_size has 101 tokens .* have 100 rows'):
    bert_weights.load_bert(write_checkpoint(tmp_path / 'b', encoder, config={'vocab_size': 101}))


def test_shape_mismatch_names_the_first_tensor_and_both_shapes(encoder, tmp_path):
  tensors = encoder_tensors(encoder)
  tensors['encoder.layer.1.intermediate.dense.weight'] = np.zeros((33, 16), np.float32)
  with pytest.raises(ValueError, match=r"'encoder.layer.1.intermediate.dense.weight' has shape "
                                       r"\(16, 33\) after its transform; the model's "
                                       r"'params/blocks/1/mlp/fc1/kernel' has shape \(16, 32\)"):
    bert_weights.load_bert(write_checkpoint(tmp_path, encoder, tensors))


def test_loader_refusals(encoder, tmp_path):
  tensors = encoder_tensors(encoder)
  del tensors['encoder.layer.0.output.LayerNorm.bias']
  with pytest.raises(ValueError, match=r"lacks encoder weights: \['params/blocks/0/ln2/bias'\]"):
    bert_weights.load_bert(write_checkpoint(tmp_path / 'a', encoder, tensors))
  with pytest.raises(ValueError, match=r"no \['params/head/bias', 'params/head/kernel'\]"):
    bert_weights.load_bert(encoder[1], num_classes=2)
  with pytest.raises(ValueError, match="position_embedding_type='relative_key' is not supported"):
    bert_weights.load_bert(write_checkpoint(
        tmp_path / 'b', encoder, config={'position_embedding_type': 'relative_key'}))
  torch_only = tmp_path / 'bin'
  torch_only.mkdir()
  shutil.copy(f'{encoder[1]}/config.json', torch_only)
  (torch_only / 'pytorch_model.bin').write_bytes(b'')
  with pytest.raises(ValueError, match='only safetensors are read'):
    bert_weights.load_bert(torch_only)
  with pytest.raises(ValueError, match='is a file; pass config='):
    bert_weights.load_bert(f'{encoder[1]}/model.safetensors')
  file_ckpt = bert_weights.load_bert(f'{encoder[1]}/model.safetensors', config=CONFIG)
  assert file_ckpt.config == CONFIG
  tensors = encoder_tensors(encoder)
  tensors['encoder.layer.0.attention.self.rotary.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="BERT does not have: .*rotary"):
    bert_weights.load_bert(write_checkpoint(tmp_path / 'c', encoder, tensors))


def test_config_from_hf_and_presets(encoder):
  saved = json.loads(open(f'{encoder[1]}/config.json').read())
  assert bert.BertConfig.from_hf_config(saved) == CONFIG
  tiny = bert.BERT_TINY
  assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.num_attention_heads,
          tiny.intermediate_size, tiny.vocab_size, tiny.layer_norm_eps) == (2, 128, 2, 512,
                                                                            30522, 1e-12)
  assert bert.BertConfig.from_hf_config({}) == bert.BERT_BASE


@pytest.mark.parametrize('config, message', [
    ({'hidden_act': 'gelu_new'}, "hidden_act='gelu_new' is not supported"),
    ({'is_decoder': True}, 'is_decoder=True is not supported'),
    ({'model_type': 'roberta'}, "model_type='roberta' is not 'bert'"),
    ({'num_attention_heads': 5}, 'num_attention_heads=5 must divide config.hidden_size=768'),
    ({'hidden_dropout_prob': 1.0}, r'config.hidden_dropout_prob must be in \[0.0, 1.0\)'),
    ({'pad_token_id': 30522}, 'pad_token_id=30522 must be below'),
    ({'vocab_size': 0}, 'config.vocab_size must be an integer >= 1'),
])
def test_bad_configs_raise(config, message):
  with pytest.raises(ValueError, match=message):
    bert.BertConfig.from_hf_config(config)


MODEL = bert.bert_model(CONFIG, num_classes=2, max_len=IDS.shape[1])


@pytest.mark.parametrize('inputs, message', [
    ({'input_ids': IDS, 'attention_mask': MASK, 'token_type_ids': TYPES + 1},
     r"\['token_type_ids'\] must lie in \[0, 2\); got values in \[1, 2\]"),
    ({'input_ids': IDS, 'attention_mask': MASK, 'token_type_ids': TYPES[:, :3]},
     "must have the shape of input_ids"),
    ({'input_ids': IDS, 'attention_mask': MASK, 'token_type_ids': TYPES.astype(np.float32)},
     'must be an integer array'),
    ({'input_ids': IDS, 'token_type_ids': TYPES}, "and optionally 'token_type_ids'"),
    ({'input_ids': IDS + 100, 'attention_mask': MASK}, r'must lie in \[0, 100\)'),
])
def test_bad_inputs_raise(inputs, message):
  variables = jax.eval_shape(MODEL.init, key(0))
  with pytest.raises(ValueError, match=message):
    MODEL.apply(variables, inputs)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=2, mlm=True), 'exclude each other'),
    (dict(max_len=33), 'max_len=33 exceeds config.max_position_embeddings=32'),
    (dict(num_classes=0), 'num_classes must be an integer >= 1'),
])
def test_bad_model_options_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bert.bert_model(CONFIG, **kwargs)


def random_variables(model, seed: int = 0):
  """Random variables of `model`'s shapes, drawn in numpy (no init program to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0.0, 0.3, a.shape).astype(a.dtype),
                      model.abstract_variables)


def test_taps_layers_and_dropout():
  assert MODEL.tap_shapes == {'embed': (7, 16), 'block0': (7, 16), 'block1': (7, 16),
                              'features': (16,)}
  assert MODEL.layer_names[-2:] == ('pooler', 'head')
  variables = random_variables(MODEL)
  train = jax.jit(MODEL.apply_train)
  a, _ = train(variables, ours_inputs(), key=key(1))
  b, _ = train(variables, ours_inputs(), key=key(2))
  assert not np.allclose(a.logits, b.logits)
  with pytest.raises(ValueError, match="'embed/dropout' is stochastic"):
    MODEL.apply_train(variables, ours_inputs())


def test_padding_embedding_starts_at_zero():
  table = bert._embedding_table(nnx.initializers.ones, nnx.Rngs(0), 4, 3, pad=1)
  np.testing.assert_array_equal(table[...], [[1] * 3, [0] * 3, [1] * 3, [1] * 3])


def test_mask_tokens_follows_80_10_10():
  ids = np.random.default_rng(0).integers(5, 100, size=(64, 128)).astype(np.int32)
  ids[:, 0], ids[:, -1], ids[:, -20:-1] = 2, 3, 0
  corrupt = jax.jit(lambda x, k: bert.mask_tokens(x, key=k, mask_id=4, vocab_size=100,
                                                  special_ids=(0, 2, 3)))
  new, labels = corrupt(ids, key(0))
  new, labels = np.asarray(new), np.asarray(labels)
  selected = labels != bert.IGNORE_INDEX
  assert not selected[:, [0, -1]].any() and not selected[:, -20:].any()
  np.testing.assert_array_equal(labels[selected], ids[selected])
  np.testing.assert_array_equal(new[~selected], ids[~selected])
  assert abs(selected[:, 1:-20].mean() - 0.15) < 0.01
  masked, kept = (new[selected] == 4).mean(), (new[selected] == ids[selected]).mean()
  assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03
  np.testing.assert_array_equal(corrupt(ids, key(0))[0], new)
  assert (np.asarray(corrupt(ids, key(1))[0]) != new).any()
  with pytest.raises(ValueError, match='mask_replace_prob \\+ random_replace_prob must be'):
    bert.mask_tokens(ids, key=key(0), mask_id=4, vocab_size=100, mask_replace_prob=0.95)
  with pytest.raises(ValueError, match='typed PRNG key'):
    bert.mask_tokens(ids, key=0, mask_id=4, vocab_size=100)


@pytest.mark.slow
def test_bert_base_dims_match_bert_model(tmp_path):
  net = randomised(transformers.BertModel(transformers.BertConfig()), std=0.05)
  ckpt = bert_weights.load_bert(save(net, tmp_path), max_len=IDS.shape[1])
  assert ckpt.config == bert.BERT_BASE
  with torch.no_grad():
    want = net(**torch_inputs(), output_hidden_states=True)
  out = run(ckpt)
  assert rel_err(out.taps[f'block{11}'], want.last_hidden_state.numpy()) <= 1e-5
  assert rel_err(out.features, want.pooler_output.numpy()) <= 1e-5


@pytest.mark.slow
def test_masked_lm_pretraining_steps_reduce_the_loss():
  model = bert.bert_model(CONFIG, mlm=True, max_len=IDS.shape[1])
  optimizer = optax.adam(1e-2)

  def step(state, k):
    params, opt_state = state
    ids, labels = bert.mask_tokens(IDS, key=k, mask_id=4, vocab_size=CONFIG.vocab_size,
                                   special_ids=(0, 2, 3), mask_prob=0.5)
    loss_fn = lambda p: bert.mlm_loss(model.apply_train(
        {'params': p, 'batch_stats': {}}, {**ours_inputs(), 'input_ids': ids},
        key=jax.random.fold_in(k, 1))[0].logits, labels)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    with jax.numpy_dtype_promotion('standard'):   # optax's Adam: decay ** count (int32)
      updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), loss

  params = model.init(key(0))['params']
  keys = jax.random.split(key(1), 60)
  _, losses = jax.jit(lambda s: jax.lax.scan(step, s, keys))((params, optimizer.init(params)))
  assert np.isfinite(losses).all() and losses[-10:].mean() < 0.5 * losses[:10].mean()
