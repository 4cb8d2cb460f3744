"""Hugging Face BERT checkpoints (safetensors) -> `lib.models.bert` models and variables.

Reads what `save_pretrained` writes: a folder with config.json and model.safetensors (or
shards listed in model.safetensors.index.json), and vocab.txt when the tokenizer was saved
beside it; or one .safetensors file with a given `BertConfig`. Checkpoints of `BertModel`
and of the task models that prefix it with `bert.` (BertForSequenceClassification,
BertForMaskedLM, BertForPreTraining) load alike. Safetensors only: nothing loads pickles
(pytorch_model.bin).

  HF tensor (prefix 'bert.' dropped)                 our variables path
  embeddings.word_embeddings.weight                  params/token_embed         [V, D]
  embeddings.position_embeddings.weight              params/pos_embed           [P, D]
  embeddings.token_type_embeddings.weight            params/type_embed          [S, D]
  embeddings.LayerNorm.{weight,bias}                 params/embed_norm/{scale,bias}
  encoder.layer.N.attention.self.{query,key,value}   params/blocks/N/attn/{q,k,v}
  encoder.layer.N.attention.output.dense             params/blocks/N/attn/out
  encoder.layer.N.attention.output.LayerNorm         params/blocks/N/ln1
  encoder.layer.N.intermediate.dense                 params/blocks/N/mlp/fc1
  encoder.layer.N.output.dense                       params/blocks/N/mlp/fc2
  encoder.layer.N.output.LayerNorm                   params/blocks/N/ln2
  pooler.dense                                       params/pooler
  classifier                                         params/head
  cls.predictions.transform.{dense,LayerNorm}        params/mlm/{transform,norm}
  cls.predictions.bias                               params/mlm/bias
  (Linear weights [out, in] are transposed to kernels [in, out].)

Old (TensorFlow-converted) checkpoints name LayerNorm parameters gamma/beta: accepted.
The int64 `position_ids`/`token_type_ids` buffers some files carry are skipped. The
masked-LM decoder is tied to the word embeddings (`cls.predictions.decoder.weight`, where
a file has it, must equal them). Heads of other tasks in the file (NSP's
`cls.seq_relationship`, a classifier or MLM head the model was not built with) are left
out and listed in the report's `unexpected`, as HF's `from_pretrained` drops them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from typing import NamedTuple

import numpy as np
from tokenizers.models import WordPiece

from lib import validate
from lib.models.bert import BertConfig, bert_model
from lib.models.core import PureModel, Variables, flatten_with_paths
from lib.models.weights import LoadReport, Target, load_variables, read_safetensors, torch_linear

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE, VOCAB_FILE = (
    'config.json', 'model.safetensors', 'model.safetensors.index.json', 'vocab.txt')
# Buffers, not parameters.
_BUFFERS = ('*position_ids', 'embeddings.token_type_ids')
# Tensors of task heads a model may not have; left out and reported.
_TASK_HEADS = ('cls.*', 'classifier.*')
# Our parameters a checkpoint may lack (a fresh head, the pooler of a BertForMaskedLM
# file): initialised from `key`.
_FRESH = ('params/pooler/*', 'params/head/*', 'params/mlm/*')
_BLOCK = {'attention.self.query': 'attn/q', 'attention.self.key': 'attn/k',
          'attention.self.value': 'attn/v', 'attention.output.dense': 'attn/out',
          'attention.output.LayerNorm': 'ln1', 'intermediate.dense': 'mlp/fc1',
          'output.dense': 'mlp/fc2', 'output.LayerNorm': 'ln2'}
_TOP = {'embeddings.word_embeddings': 'token_embed', 'embeddings.position_embeddings': 'pos_embed',
        'embeddings.token_type_embeddings': 'type_embed', 'embeddings.LayerNorm': 'embed_norm',
        'pooler.dense': 'pooler', 'classifier': 'head', 'cls.predictions.transform.dense':
        'mlm/transform', 'cls.predictions.transform.LayerNorm': 'mlm/norm'}
_WORDS = 'embeddings.word_embeddings.weight'


class BertCheckpoint(NamedTuple):
  """A loaded checkpoint.

  Attributes:
    model: the `PureModel` (`lib.models.bert.bert_model`) the variables are for.
    variables: {'params', 'batch_stats'} with the checkpoint's weights.
    config: the architecture read from config.json (or given).
    report: what the load left out: `missing` (our parameters initialised from `key`),
      `unexpected` (file tensors of heads the model does not have).
  """
  model: PureModel
  variables: Variables
  config: BertConfig
  report: LoadReport


def bert_names(name: str) -> Target | None:
  """Our variables path (and transform) of a canonical HF BERT tensor name, or None.

  Canonical names have no 'bert.' prefix and LayerNorm 'weight'/'bias' (see
  `canonical_tensors`).
  """
  if name == 'cls.predictions.bias':
    return 'params/mlm/bias'
  module, _, kind = name.rpartition('.')
  layer = re.fullmatch(r'encoder\.layer\.(\d+)\.(.+)', module)
  ours = (f'blocks/{layer[1]}/{_BLOCK[layer[2]]}' if layer and layer[2] in _BLOCK
          else _TOP.get(module))
  if ours is None or kind not in ('weight', 'bias'):
    return None
  if module.startswith('embeddings.') and module.endswith('_embeddings'):
    return f'params/{ours}' if kind == 'weight' else None
  if module.endswith('LayerNorm'):
    return f'params/{ours}/{"scale" if kind == "weight" else "bias"}'
  return (f'params/{ours}/kernel', torch_linear) if kind == 'weight' else f'params/{ours}/bias'


def _canonical_name(name: str) -> str:
  name = name.removeprefix('bert.')
  module, _, kind = name.rpartition('.')
  if module.endswith('LayerNorm'):
    kind = {'gamma': 'weight', 'beta': 'bias'}.get(kind, kind)
  return f'{module}.{kind}'


def _untie_decoder(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the tied masked-LM decoder, checking that its weight equals the word embeddings."""
  weight = tensors.pop('cls.predictions.decoder.weight', None)
  if weight is not None and _WORDS in tensors and not np.array_equal(weight, tensors[_WORDS]):
    raise ValueError('cls.predictions.decoder.weight differs from the word embeddings; '
                     'untied masked-LM decoders are not supported.')
  bias = tensors.pop('cls.predictions.decoder.bias', None)
  if bias is not None:
    tensors.setdefault('cls.predictions.bias', bias)
  return tensors


def canonical_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF BERT tensors under canonical names: no 'bert.' prefix, LayerNorm gamma/beta as
  weight/bias, buffers dropped, the tied MLM decoder removed.

  Raises:
    ValueError: two file names become one (e.g. 'x' and 'bert.x'), or an untied decoder.
  """
  out: dict[str, np.ndarray] = {}
  for name, value in tensors.items():
    canonical = _canonical_name(name)
    if any(fnmatch.fnmatchcase(canonical, p) for p in _BUFFERS):
      continue
    if canonical in out:
      raise ValueError(f'the checkpoint has two tensors named {canonical!r} (with and without '
                       "the 'bert.' prefix, or as gamma/beta and weight/bias).")
    out[canonical] = value
  return _untie_decoder(out)


def _read_weights(folder: str) -> dict[str, np.ndarray]:
  index = os.path.join(folder, INDEX_FILE)
  if os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
    return read_safetensors(os.path.join(folder, WEIGHTS_FILE))
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    return {k: v for s in shards for k, v in read_safetensors(os.path.join(folder, s)).items()}
  found = sorted(os.listdir(folder))
  raise ValueError(f'path={folder!r} has no {WEIGHTS_FILE} or {INDEX_FILE} (found {found}); '
                   'only safetensors are read (convert a pytorch_model.bin with '
                   'transformers: model.save_pretrained(dir, safe_serialization=True)).')


def read_checkpoint(path: str | os.PathLike, config: BertConfig | None = None
                    ) -> tuple[dict[str, np.ndarray], BertConfig]:
  """The canonical tensors and the config of a checkpoint folder or .safetensors file.

  Args:
    path: a `save_pretrained` folder, or a .safetensors file.
    config: the architecture; read from the folder's config.json when None.

  Raises:
    ValueError: the path does not exist, has no safetensors weights, a file comes without
      config, or config.json names unsupported options.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    if config is None:
      raise ValueError(f'path={path!r} is a file; pass config=BertConfig(...) (or the folder '
                       f'with its {CONFIG_FILE}).')
    return canonical_tensors(read_safetensors(path)), config
  if not os.path.isdir(path):
    raise ValueError(f'path={path!r} is neither a checkpoint folder nor a .safetensors file.')
  if config is None:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
      raise ValueError(f'path={path!r} has no {CONFIG_FILE}; pass config=BertConfig(...).')
    with open(config_path) as f:
      config = BertConfig.from_hf_config(json.load(f))
  return canonical_tensors(_read_weights(path)), config


def check_vocab_size(vocab_size: int, tensors: dict[str, np.ndarray], what: str) -> None:
  """Raises ValueError unless the word embeddings have `vocab_size` rows; `what` names the
  vocabulary's source for the message (e.g. 'vocab.txt')."""
  if _WORDS not in tensors:
    raise ValueError(f'the checkpoint has no word embeddings ({_WORDS}).')
  rows = tensors[_WORDS].shape[0]
  if rows != vocab_size:
    raise ValueError(f'{what} has {vocab_size} tokens but the checkpoint\'s word embeddings '
                     f'have {rows} rows; use the vocabulary the model was trained with.')


def _check_vocabularies(path: str, config: BertConfig, tensors: dict[str, np.ndarray],
                        vocab_size: int | None) -> None:
  check_vocab_size(config.vocab_size, tensors, 'config vocab_size')
  vocab_file = os.path.join(path, VOCAB_FILE)
  if vocab_size is None and os.path.isfile(vocab_file):
    check_vocab_size(len(WordPiece.read_file(vocab_file)), tensors, vocab_file)
  elif vocab_size is not None:
    validate.check_int(vocab_size, 'vocab_size', minimum=1)
    check_vocab_size(vocab_size, tensors, 'vocab_size')


def _target_path(target: Target | None) -> str | None:
  return target if target is None or isinstance(target, str) else target[0]


def _fresh_parameters(tensors: dict[str, np.ndarray], slots: dict[str, object],
                      key) -> list[str]:
  """Our parameters the file lacks, which `key` must initialise; ValueError for others."""
  placed = {_target_path(bert_names(name)) for name in tensors}
  missing = [p for p in slots if p not in placed]
  lacking = [p for p in missing if not any(fnmatch.fnmatchcase(p, f) for f in _FRESH)]
  if lacking:
    raise ValueError(f'the checkpoint lacks encoder weights: {lacking}.')
  if missing and key is None:
    raise ValueError(f'the checkpoint has no {missing}; pass key=jax.random.key(...) to '
                     'initialise them (a new head, or the pooler of a masked-LM checkpoint).')
  return missing


def load_bert(path: str | os.PathLike, *, config: BertConfig | None = None,
              num_classes: int | None = None, mlm: bool = False, max_len: int | None = None,
              vocab_size: int | None = None, key=None) -> BertCheckpoint:
  """A Hugging Face BERT checkpoint as a `PureModel` and its variables.

  Args:
    path: a `save_pretrained` folder (config.json + model.safetensors) or a .safetensors
      file (then `config` is required).
    config: the architecture, overriding config.json.
    num_classes: a classification head (BertForSequenceClassification's `classifier`,
      loaded when the file has one, else initialised from `key`), or None.
    mlm: the masked-LM head (`cls.predictions`).
    max_len: longest input sequence (default: config.max_position_embeddings).
    vocab_size: the tokenizer's vocabulary size, checked against the word embeddings;
      by default the folder's vocab.txt is checked when there is one.
    key: typed PRNG key for parameters the file lacks (a new head; the pooler, which
      BertForMaskedLM files do not have); None requires the file to have them all.

  Returns:
    `BertCheckpoint(model, variables, config, report)`.

  Raises:
    ValueError: no safetensors weights or config; unsupported config options; a vocabulary
      (config vocab_size, vocab.txt or `vocab_size`) whose size differs from the word
      embeddings' rows (both numbers given); a tensor of the wrong shape (the first one,
      by canonical name, with both shapes); encoder weights missing; parameters missing
      without `key`; file tensors that are neither ours nor another task's head.

  Example:
    >>> ckpt = load_bert('bert_uncased_L-2_H-128_A-2', num_classes=28, key=jax.random.key(0))
    >>> ckpt.model.apply(ckpt.variables, tokens).features     # pooler_output [B, 128]
  """
  if key is not None:
    validate.check_key(key)
  tensors, config = read_checkpoint(path, config)
  _check_vocabularies(os.fspath(path), config, tensors, vocab_size)
  model = bert_model(config, num_classes, max_len=max_len, mlm=mlm)
  slots = flatten_with_paths(model.abstract_variables)[0]
  fresh = _fresh_parameters(tensors, slots, key)
  like = model.init(key) if fresh else model.abstract_variables
  # Tensors of parts the model lacks (another task's head, a deeper encoder) are unexpected.
  ours = lambda name: bert_names(name) if _target_path(bert_names(name)) in slots else None
  variables, report = load_variables(tensors, ours, like, partial=True)
  stray = [n for n in report.unexpected if not any(fnmatch.fnmatchcase(n, p) for p in _TASK_HEADS)]
  if stray:
    raise ValueError(f'the checkpoint has tensors BERT does not have: {stray}.')
  return BertCheckpoint(model, variables, config, report)
