"""Tamper resistance (Henderson et al. 2023, "Self-Destructing Models"; PAPERS.md §4, issue 12).

Can an encoder be meta-trained so that it stays good at its desired task (profession) while
fine-tuning it for a harmful one (gender) is no easier than fine-tuning a random
initialisation?

Status (2026-12-01): a section of the main job (experiments/main.py); runs end to end and
resumes. The attacker compiles one program per (mode, batch size) for every n, search and
re-run (`lib.meta.attacker`: n traced, runs padded);
AC and every MLAC model share one second-order meta step (`program_options`: K_max and
A_max static, the model's K and adversary weights in the batch, `lib.meta.mlac`); desired-
only is its own first-order program. Compiled programs in runlocal: 16 attack + 5 meta
before, 2 attack + 2 meta now. Results of runlocal (3 re-runs; 2026-12-01, with
the vocabulary made deterministic): the pretrained encoder is not more attackable than a
random initialisation at any n (gender accuracy 0.528/0.560/0.640/0.712 against random's
0.552/0.573/0.650/0.775 at n = 20/50/100/200, intervals ±0.05-0.24), so on this data and
attacker blocking cannot be shown; the report says so instead of a verdict. MLAC's
profession accuracy (0.088-0.116 on the test split) stays below desired-only's (0.202), AC's
in between (0.174); the simulated adversaries' harmful CE stayed near ln 2 = 0.693
throughout meta-training. It is not a feature collapse (measured on the test texts from an
earlier run's checkpoints): the features' mean per-dimension spread is 0.062-0.085 for the
MLAC models against the pretrained encoder's 0.081, while desired-only doubles it to 0.148
and its profession logits spread twice as wide (sd 0.123 against 0.038-0.061). The
harmful term slows the desired task rather than destroying it; both are far from trained
at 60 steps (desired-only's outer-batch CE 3.18 against ln 28 = 3.33). Whether the gap
closes with more outer steps (the paper: 50,000) was not measured; no setting was tuned.

Protocol:

1. Data: `bios` (generated biographies, offline; runlocal) or Bias in Bios from local files
   (`bias_in_bios`, `config.data_path`; full). The train split's first `num_train` texts are
   the pool of every training stage (vocabulary, pretraining, meta-training) and the
   attacker's pool of labelled examples; the validation split's first `num_val` are the
   attacker's held-out set (oracle early stopping, as the paper); the test split's first
   `num_test` measure desired-task accuracy. Texts are tokenised once to `max_len` tokens:
   longer ones are truncated with a warning (the tokenizer's policy: names and
   professions are in the first sentence); an empty text is refused (ValueError naming the
   split and index), as are labels outside the 28 professions or 2 genders.
2. Encoder: with `config.bert_path` a Hugging Face BERT folder (BERT-Tiny,
   google/bert_uncased_L-2_H-128_A-2) and its vocab.txt (or `config.vocab_path`), whose size
   must match the word embeddings (`lib.models.load_bert` refuses otherwise). Offline
   (`bert_path=''`): a WordPiece vocabulary trained on the pool texts
   (`lib.text.wordpiece.train_vocab`) and a small BERT pretrained with masked-language
   modelling on them (BERT's 15% / 80-10-10, AdamW), resumable in `workdir/pretrain`
   (`lib.train.run_loop`; a relaunch under another pretraining config is refused by
   `lib.run_config`). The pooler is not trained by MLM (BERT's is trained by next-sentence
   prediction); every later stage trains it.
3. Models (`config.models`): 'random' (a fresh initialisation of the same architecture),
   'pretrained' (the encoder of 2), and meta-trained from the pretrained encoder with
   `lib.meta.mlac.make_mlac` (each in `workdir/meta/<name>`, resumable, its own config
   recorded): 'desired' (profession CE only), 'ac' (adversarial censoring, K = 0),
   'mlac' (K = `mlac_k` inner steps; plus one model per K of `k_sweep`) and 'mlac_multi'
   (K = `mlac_k`, `num_adversaries` simulated adversaries per outer step, one vmap).
4. Attack (`lib.meta.attacker.attack_search`, the same grid and keys for every model): for
   each n of `attack_ns`, a re-initialised head, linear probe or full fine-tune, a grid of
   learning rates (log-spaced over 1e-5…1e-2), step counts and batch sizes, held-out
   accuracy every `attack_eval_every` steps with the best kept; the best setting (mean over
   `attack_search_seeds`) is re-run with `attack_reruns` fresh seeds. Reported: the mean
   harmful accuracy of the re-runs with a 95% t interval over them, and the desired-task
   accuracy on the test split (models with a profession head).

`experiments.tamper_resistance_report.section` writes the report from the numbers.

Variants:
  runlocal   `bios` (gender_leak 1), 4000 pool texts, max_len 32, a 2-layer width-64 BERT
             pretrained 300 MLM steps; 60 outer steps per meta model at outer lr 5e-4
             (the paper: 50,000 at 1e-5: far beyond 2 CPU cores); MLAC K = 4 rather than
             16, because each outer step costs about K + 1 forward-backward passes of the
             inner batch plus their second-order backward pass, and K = 16 would multiply
             the meta-training time by ~3.5; K sweep {1, 4}; 2 adversaries; inner batches
             {8, 16} (the paper's {12, 24, 48}); attacker: 3 learning rates (1e-4, 1e-3,
             1e-2), 50 or 100 steps, batch 12, probe and full, 3 re-runs.
  (empty)    Bias in Bios from `data_path`, BERT-Tiny from `bert_path`, max_len 128, MLAC
             K = 16 (sweep 1, 4, 16), 4 adversaries, 2000 outer steps at lr 1e-5 per meta
             model, the paper's attacker ranges (7 learning rates, 100…1000 steps, batches
             12/24/48, probe and full), 6 re-runs.

Timing (runlocal; the report's body lists each launch's stage times). 2026-12-01, 2 quiet
cores (load < 2): 5 min 6 s wall, 483 CPU-seconds (user + sys), about a minute over the
4-minute target. Stages: vocabulary + 300 MLM steps 19 s; attacks 11-23 s per model (the
first compiles both attack programs; before, the random and pretrained encoders' attacks
took 15 min for 16 programs at load 11-14); desired-only 5 s; the shared second-order meta
step 70 s for AC (compile + 60 steps), then 34-37 s per MLAC model (60 steps at K_max = 4,
A_max = 2: the no-op steps and the zero-weight adversary are compute the shared program pays
in exchange for compiling once). What would cut it: fewer outer steps (MLAC is already
under-trained at 60) or a smaller K_max for the K sweep's K = 1 model.

Launch:
  python -m launch.run --config=experiments/tamper_resistance.py:runlocal --workdir=/tmp/tr
  python -m launch.run --config=experiments/tamper_resistance.py --workdir=/tmp/tr_full \
      --config.data_path=~/data/bias_in_bios --config.bert_path=~/models/bert_uncased_L-2_H-128_A-2
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.stats
from absl import logging

from experiments import tamper_resistance_report as report
from lib import data as data_lib
from lib import run_config, train, validate
from lib.data._bios_dataset import GENDERS, PROFESSIONS
from lib.meta import attacker
from lib.meta.mlac import MLACOptions, make_mlac
from lib.models import bert, bert_weights
from lib.report import markdown
from lib.report.process import is_writer
from lib.text import wordpiece

Array = jax.Array
MODEL_KINDS = ('random', 'pretrained', 'desired', 'ac', 'mlac', 'mlac_multi')
DATASETS = ('bios', 'bias_in_bios')
# Only the evaluation reads these: a relaunch may change them and reuses every checkpoint.
RESUMABLE_KEYS = ('num_val', 'num_test', 'attack_ns', 'attack_lrs', 'attack_steps',
                  'attack_batch_sizes', 'attack_modes', 'attack_eval_every',
                  'attack_search_seeds', 'attack_reruns', 'attack_seed')
PRETRAIN_INTS = ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
                 'intermediate_size', 'num_steps', 'batch_size', 'warmup_steps')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Config for `arg`: 'runlocal', or '' (Bias in Bios and BERT-Tiny from user paths)."""
  variants = run_config.variants(arg, ('runlocal',))
  c = ml_collections.ConfigDict()
  c.dataset = 'bias_in_bios'
  c.data_path = '~/data/bias_in_bios'   # LabHC parquet files or biosbias JSON lines
  c.gender_leak = 1.0                   # bios only: how much names and words reveal gender
  c.gender_correlation = 0.5            # bios only: how much the profession predicts it
  c.data_seed = 0
  c.num_train = 20000   # pool: vocabulary, pretraining, meta-training, attacker's examples
  c.num_val = 1000      # attacker's held-out set (validation split)
  c.num_test = 2000     # desired-task accuracy (test split)
  c.max_len = 128       # tokens per text, [CLS] and [SEP] included
  c.bert_path = '~/models/bert_uncased_L-2_H-128_A-2'   # '' = pretrain here
  c.vocab_path = ''     # '' = bert_path's vocab.txt
  c.pretrain = ml_collections.ConfigDict(dict(
      vocab_size=8000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=512, num_steps=5000, batch_size=64, warmup_steps=200,
      learning_rate=1e-3, weight_decay=0.01))
  c.models = ','.join(MODEL_KINDS)
  c.mlac_k = 16          # K of 'mlac' and 'mlac_multi'
  c.k_sweep = '1,4'      # further K values, one 'mlac' model each
  c.num_adversaries = 4  # of 'mlac_multi'
  c.meta = ml_collections.ConfigDict(dict(
      num_steps=2000, batch_size=20, outer_lr=1e-5, adversary_lr=1e-4,
      inner_batch_sizes='12,24,48', calibration_iters=500, learned_head=True,
      first_order=False))
  c.attack_ns = '20,50,100,200'
  c.attack_lrs = ','.join(f'{x:.3g}' for x in attacker.LEARNING_RATES)
  c.attack_steps = ','.join(map(str, attacker.STEPS))
  c.attack_batch_sizes = '12,24,48'
  c.attack_modes = 'probe,full'
  c.attack_eval_every = 50
  c.attack_search_seeds = 1
  c.attack_reruns = 6
  c.attack_seed = 0
  c.seed = 0
  c.checkpoint_every = 500
  c.log_every = 50
  if 'runlocal' in variants:
    c.dataset, c.data_path = 'bios', ''
    c.num_train, c.num_val, c.num_test, c.max_len = 4000, 200, 500, 32
    c.bert_path = ''
    c.pretrain = ml_collections.ConfigDict(dict(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_steps=300, batch_size=32, warmup_steps=30,
        learning_rate=2e-3, weight_decay=0.01))
    c.mlac_k, c.k_sweep, c.num_adversaries = 4, '1', 2
    c.meta = ml_collections.ConfigDict(dict(
        num_steps=60, batch_size=20, outer_lr=5e-4, adversary_lr=1e-3,
        inner_batch_sizes='8,16', calibration_iters=100, learned_head=True,
        first_order=False))
    c.attack_lrs, c.attack_steps, c.attack_batch_sizes = '1e-4,1e-3,1e-2', '50,100', '12'
    c.attack_eval_every, c.attack_reruns = 25, 3
    c.checkpoint_every, c.log_every = 50, 20
  return c


def parse_numbers(value: Any, name: str, kind: type = int) -> list:
  """The comma-separated numbers of config field `name` (a non-empty list)."""
  try:
    out = [kind(v) for v in str(value).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'config.{name} must be comma-separated numbers, e.g. "1,2"; got '
                     f'{value!r}.') from None
  if not out:
    raise ValueError(f'config.{name} must list at least one value (an attacker grid or sweep '
                     f'with no points); got {value!r}.')
  return out


def model_names(c: ml_collections.ConfigDict) -> list[str]:
  """The models of the study, in table order: 'random', 'pretrained', 'desired', 'ac',
  'mlac_k<K>' (main K first, then the sweep), 'mlac_k<K>_a<A>'."""
  kinds = run_config.names(c.models, MODEL_KINDS, 'config.models')
  names = []
  for kind in MODEL_KINDS:
    if kind not in kinds:
      continue
    if kind == 'mlac':
      sweep = [k for k in parse_numbers(c.k_sweep, 'k_sweep') if k != c.mlac_k]
      names += [f'mlac_k{k}' for k in [c.mlac_k, *sorted(set(sweep))]]
    elif kind == 'mlac_multi':
      names.append(f'mlac_k{c.mlac_k}_a{c.num_adversaries}')
    else:
      names.append(kind)
  return names


def mlac_options(c: ml_collections.ConfigDict, name: str) -> MLACOptions | None:
  """The `MLACOptions` that meta-train model `name` (None: 'random', 'pretrained')."""
  if name in ('random', 'pretrained'):
    return None
  m = c.meta
  common = dict(outer_lr=m.outer_lr, adversary_lr=m.adversary_lr,
                batch_sizes=tuple(parse_numbers(m.inner_batch_sizes, 'meta.inner_batch_sizes')),
                calibration_iters=m.calibration_iters, learned_head=m.learned_head,
                first_order=m.first_order)
  if name == 'desired':
    return MLACOptions(num_steps=0, harmful_weight=0.0, **common)
  if name == 'ac':
    return MLACOptions(num_steps=0, **common)
  parts = name.split('_')           # mlac_k<K>[_a<A>]
  k = int(parts[1][1:])
  adversaries = int(parts[2][1:]) if len(parts) > 2 else 1
  return MLACOptions(num_steps=k, num_adversaries=adversaries, **common)


def program_options(c: ml_collections.ConfigDict, name: str) -> MLACOptions | None:
  """The options model `name`'s meta step is compiled with: every adversarial model (AC,
  each K, the multi-adversary one) shares one program of K_max = the largest K and A_max =
  the largest adversary count, its own K and A given in the batch (`lib.meta.mlac`, "One
  program for many meta models"); 'desired' (no adversary) is its own first-order program."""
  options = mlac_options(c, name)
  if options is None or not options.adversarial:
    return options
  adversarial = [o for o in map(functools.partial(mlac_options, c), model_names(c))
                 if o is not None and o.adversarial]
  return dataclasses.replace(options, num_steps=max(o.num_steps for o in adversarial),
                             num_adversaries=max(o.num_adversaries for o in adversarial))


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of `c` before any work (paths: existence only; weights are not read).

  Raises:
    ValueError: naming `config.<key>` and what was expected.
  """
  validate.check_choice(c.dataset, DATASETS, 'config.dataset')
  for name, minimum in (('data_seed', 0), ('num_train', 2), ('num_val', 1), ('num_test', 1),
                        ('max_len', 3), ('mlac_k', 0), ('num_adversaries', 1), ('seed', 0),
                        ('attack_eval_every', 1), ('attack_search_seeds', 1),
                        ('attack_reruns', 2), ('attack_seed', 0), ('checkpoint_every', 1),
                        ('log_every', 1)):
    validate.check_int(c[name], f'config.{name}', minimum=minimum)
  validate.check_number(c.gender_leak, 'config.gender_leak', low=0.0, high=1.0)
  validate.check_number(c.gender_correlation, 'config.gender_correlation', low=0.0, high=1.0)
  if c.dataset == 'bias_in_bios' and not (c.data_path and os.path.exists(
      os.path.expanduser(c.data_path))):
    raise ValueError(f'config.data_path={c.data_path!r} does not exist; bias_in_bios reads '
                     'local LabHC parquet or biosbias JSON-lines files (or use dataset=bios).')
  for name in ('bert_path', 'vocab_path'):
    if not isinstance(c[name], str):
      raise ValueError(f'config.{name} must be a string; got {c[name]!r}.')
  if c.bert_path:
    folder = os.path.expanduser(c.bert_path)
    if not os.path.isfile(os.path.join(folder, bert_weights.CONFIG_FILE)):
      raise ValueError(f'config.bert_path={c.bert_path!r} is not a Hugging Face BERT folder '
                       '(config.json, model.safetensors, vocab.txt); or "" to pretrain one.')
    vocab = os.path.expanduser(c.vocab_path) if c.vocab_path else os.path.join(folder,
                                                                               'vocab.txt')
    if not os.path.isfile(vocab):
      raise ValueError(f'no vocabulary at {vocab!r}: set config.vocab_path to the vocab.txt '
                       'of config.bert_path.')
  else:
    pretrain_config(c, vocab_size=c.pretrain.vocab_size)
  names = model_names(c)
  for name in ('batch_size', 'calibration_iters'):
    validate.check_int(c.meta[name], f'config.meta.{name}', minimum=1)
  validate.check_int(c.meta.num_steps, 'config.meta.num_steps', minimum=1)
  for name in ('learned_head', 'first_order'):
    validate.check_bool(c.meta[name], f'config.meta.{name}')
  for name in names:
    mlac_options(c, name)
  inner = max(parse_numbers(c.meta.inner_batch_sizes, 'meta.inner_batch_sizes'))
  if max(c.meta.batch_size, inner) > c.num_train:
    raise ValueError(f'config.num_train={c.num_train} is below a meta batch size '
                     f'({max(c.meta.batch_size, inner)}).')
  attack_grid(c)


def attack_grid(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The attacker's settings from the config, checked (an empty grid is refused)."""
  ns = parse_numbers(c.attack_ns, 'attack_ns')
  validate.check_ints(ns, 'config.attack_ns', minimum=1)
  if max(ns) > c.num_train:
    raise ValueError(f'config.attack_ns={c.attack_ns!r} asks for more examples than '
                     f'config.num_train={c.num_train}.')
  rates = parse_numbers(c.attack_lrs, 'attack_lrs', float)
  for rate in rates:
    validate.check_number(rate, 'config.attack_lrs', low=0.0)
    validate.check_positive(rate, 'config.attack_lrs')
  steps = parse_numbers(c.attack_steps, 'attack_steps')
  validate.check_ints(steps, 'config.attack_steps', minimum=1)
  if any(s % c.attack_eval_every for s in steps):
    raise ValueError(f'config.attack_steps={c.attack_steps!r} must be multiples of '
                     f'config.attack_eval_every={c.attack_eval_every}.')
  sizes = parse_numbers(c.attack_batch_sizes, 'attack_batch_sizes')
  validate.check_ints(sizes, 'config.attack_batch_sizes', minimum=1)
  modes = [m for m in str(c.attack_modes).split(',') if m]
  if not modes:
    raise ValueError(f'config.attack_modes must list some of {list(attacker.MODES)}; got '
                     f'{c.attack_modes!r}.')
  for mode in modes:
    validate.check_choice(mode, attacker.MODES, 'config.attack_modes')
  return {'ns': ns, 'learning_rates': rates, 'steps': steps, 'batch_sizes': sizes,
          'modes': modes}


def pretrain_config(c: ml_collections.ConfigDict, *, vocab_size: int) -> bert.BertConfig:
  """The `BertConfig` pretrained offline, with a vocabulary of `vocab_size` ids."""
  p = c.pretrain
  for name in PRETRAIN_INTS:
    validate.check_int(p.get(name), f'config.pretrain.{name}',
                       minimum=0 if name == 'warmup_steps' else 1)
  if p.warmup_steps >= p.num_steps:
    raise ValueError(f'config.pretrain.warmup_steps must be below config.pretrain.num_steps='
                     f'{p.num_steps}; got {p.warmup_steps}.')
  validate.check_number(p.learning_rate, 'config.pretrain.learning_rate', low=0.0)
  validate.check_positive(p.learning_rate, 'config.pretrain.learning_rate')
  validate.check_number(p.weight_decay, 'config.pretrain.weight_decay', low=0.0)
  if p.batch_size > c.num_train:
    raise ValueError(f'config.pretrain.batch_size={p.batch_size} exceeds config.num_train.')
  if p.hidden_size % p.num_attention_heads:
    raise ValueError(f'config.pretrain.num_attention_heads={p.num_attention_heads} must '
                     f'divide config.pretrain.hidden_size={p.hidden_size}.')
  return bert.BertConfig(vocab_size=vocab_size, hidden_size=p.hidden_size,
                         num_hidden_layers=p.num_hidden_layers,
                         num_attention_heads=p.num_attention_heads,
                         intermediate_size=p.intermediate_size, max_position_embeddings=c.max_len,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# ----------------------------------------------------------------------------- data


class Split(NamedTuple):
  """A tokenised split: `inputs` {'input_ids', 'attention_mask'} int32 [N, T], labels [N]."""
  inputs: dict[str, np.ndarray]
  profession: np.ndarray
  gender: np.ndarray
  texts: np.ndarray


def load_texts(c: ml_collections.ConfigDict, split: str, size: int):
  """The first `size` examples of a split of the configured data set (a `BiosDataset`)."""
  if c.dataset == 'bios':
    return data_lib.get_dataset('bios', split, image_size=None, seed=c.data_seed,
                                num_examples=size, gender_leak=c.gender_leak,
                                gender_correlation=c.gender_correlation)
  full = data_lib.get_dataset('bias_in_bios', split, image_size=None, seed=c.data_seed,
                              path=os.path.expanduser(c.data_path))
  if len(full) < size:
    raise ValueError(f'the {split} split of {c.data_path!r} has {len(full)} examples; the '
                     f'config asks for {size}.')
  return full


def check_texts(texts: Sequence[str], name: str) -> None:
  """Refuses an empty (or whitespace-only) text: it carries neither task's signal."""
  for i, text in enumerate(texts):
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f'{name}[{i}] is an empty text ({text!r}); remove it from the data '
                       '(the study refuses empty texts).')


def encode(texts: Sequence[str], profession: np.ndarray, gender: np.ndarray,
           tokenizer: wordpiece.WordPieceTokenizer, name: str) -> Split:
  """Tokenises texts after checking them and their labels.

  Texts longer than the tokenizer's max_len are truncated with a warning (counted, first
  named); an empty text or a label outside the 28 professions or 2 genders is refused.

  Raises:
    ValueError: naming `name` and the first bad entry.
  """
  texts = [str(t) for t in texts]
  check_texts(texts, f'{name} texts')
  validate.check_labels(np.asarray(profession), len(PROFESSIONS), f'{name} profession labels')
  validate.check_labels(np.asarray(gender), len(GENDERS), f'{name} gender labels')
  tokens = tokenizer(texts)
  inputs = {k: tokens[k] for k in ('input_ids', 'attention_mask')}
  return Split(inputs, np.asarray(profession, np.int32), np.asarray(gender, np.int32),
               np.asarray(texts, dtype=object))


def load_split(c: ml_collections.ConfigDict, split: str, size: int,
               tokenizer: wordpiece.WordPieceTokenizer) -> Split:
  ds = load_texts(c, split, size)
  rows = np.arange(size)
  return encode(list(ds.text[rows]), ds.profession[rows], ds.gender[rows], tokenizer, split)


# ----------------------------------------------------------------------------- encoder


class Encoder(NamedTuple):
  """The encoder every model shares: `model` (BERT without a head), its pretrained
  `variables`, the `tokenizer`, and where it came from ('pretrained here' or a folder)."""
  model: Any
  variables: Any
  tokenizer: wordpiece.WordPieceTokenizer
  source: str
  pretrain_steps: int


@functools.lru_cache(maxsize=8)
def encoder_model(config: bert.BertConfig, max_len: int):
  """One encoder (`bert_model`, no head) per config: its `apply` is the same object across
  models and runs of a process, so every compiled program is shared."""
  return bert.bert_model(config, num_classes=None, max_len=max_len)


@functools.lru_cache(maxsize=8)
def _mlm_model(config: bert.BertConfig, max_len: int):
  return bert.bert_model(config, mlm=True, max_len=max_len)


def _mlm_step(model, optimizer, mask_args, seed, state, batch):
  """One masked-LM step on token ids (pure): corruption drawn from (seed, step)."""
  key = jax.random.fold_in(jax.random.key(seed), state.step)
  ids, labels = bert.mask_tokens(batch['input_ids'], key=key, **mask_args)

  def loss_fn(params):
    variables = {**state.variables, 'params': params}
    logits = model.apply(variables, {'input_ids': ids,
                                     'attention_mask': batch['attention_mask']}).logits
    return bert.mlm_loss(logits, labels)

  loss, grads = jax.value_and_grad(loss_fn)(state.variables['params'])
  updates, opt_state = optimizer.update(grads, state.opt_state, state.variables['params'])
  params = optax.apply_updates(state.variables['params'], updates)
  return (train.TrainState(state.step + 1, {**state.variables, 'params': params}, opt_state),
          {'loss': loss})


def _pretrain_record(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config keys the pretraining stage depends on (recorded in workdir/pretrain)."""
  keys = ('dataset', 'data_path', 'gender_leak', 'gender_correlation', 'data_seed',
          'num_train', 'max_len', 'seed')
  return {**{k: c[k] for k in keys}, 'pretrain': c.pretrain.to_dict()}


def pretrain(c: ml_collections.ConfigDict, workdir: str, pool_texts: Sequence[str], *,
             progress: bool = True) -> Encoder:
  """Trains the vocabulary and MLM-pretrains the encoder in `workdir/pretrain` (resuming)."""
  folder = os.path.join(workdir, 'pretrain')
  run_config.prepare_workdir(folder, _pretrain_record(c))
  vocab_file = os.path.join(folder, 'vocab.txt')
  if not os.path.isfile(vocab_file) and is_writer():
    check_texts(pool_texts, 'train texts')
    written = wordpiece.train_vocab(list(pool_texts), vocab_file + '.tmp',
                                    vocab_size=c.pretrain.vocab_size)
    os.replace(written, vocab_file)
  tokenizer = wordpiece.from_vocab(vocab_file, max_len=c.max_len)
  config = pretrain_config(c, vocab_size=tokenizer.vocab_size)
  mlm = _mlm_model(config, c.max_len)
  tokens = tokenizer(list(pool_texts))
  p = c.pretrain
  optimizer = train.make_optimizer(name='adamw', learning_rate=p.learning_rate,
                                   num_steps=p.num_steps, warmup_steps=p.warmup_steps,
                                   weight_decay=p.weight_decay)
  mask_args = dict(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                   special_ids=tokenizer.special_ids)
  step = jax.jit(lambda s, b: _mlm_step(mlm, optimizer, mask_args, c.seed, s, b),
                 donate_argnums=0)
  n = len(pool_texts)

  def batch_fn(i: int) -> dict[str, Array]:  # stateless: rng stream [seed, 3, step]
    rows = np.random.default_rng([c.seed, 3, i]).choice(n, p.batch_size, replace=False)
    return {k: jnp.asarray(tokens[k][rows]) for k in ('input_ids', 'attention_mask')}

  device = jax.local_devices()[0]

  def init():
    variables = mlm.init(jax.random.key(c.seed))
    state = train.TrainState(jnp.zeros((), jnp.int32), variables,
                             optimizer.init(variables['params']))
    return jax.device_put(state, device)

  state = train.run_loop(
      init=init, step_fn=step, batch_fn=batch_fn,
      num_steps=p.num_steps, workdir=folder, checkpoint_every=c.checkpoint_every,
      log_every=c.log_every, progress=progress)
  model = encoder_model(config, c.max_len)
  params = {k: v for k, v in state.variables['params'].items() if k != 'mlm'}
  variables = {**state.variables, 'params': params}
  return Encoder(model, variables, tokenizer, 'pretrained here', int(state.step))


def load_encoder(c: ml_collections.ConfigDict) -> Encoder:
  """BERT from `config.bert_path` with its (or `config.vocab_path`'s) vocabulary.

  Raises:
    ValueError: the vocabulary's size differs from the checkpoint's word embeddings.
  """
  folder = os.path.expanduser(c.bert_path)
  vocab = os.path.expanduser(c.vocab_path) if c.vocab_path else folder
  tokenizer = wordpiece.from_vocab(vocab, max_len=c.max_len)
  ckpt = bert_weights.load_bert(folder, max_len=c.max_len, vocab_size=tokenizer.vocab_size,
                                key=jax.random.key(c.seed))
  model = encoder_model(ckpt.config, c.max_len)
  return Encoder(model, ckpt.variables, tokenizer, c.bert_path, 0)


# ----------------------------------------------------------------------------- meta-training


def meta_batch(pool: Split, options: MLACOptions, step: int, *, batch_size: int,
               seed: int, program: MLACOptions | None = None) -> dict[str, Any]:
  """The outer batch of `step` and, for a harmful term, the inner blocks [A_max, K_max, M]
  of the `program` options (default `options`; drawn with replacement) with the model's
  own K ('num_steps') and A ('adversary_weights': 1 for its first A adversaries), all from
  the rng stream [seed, 7, step]."""
  program = program or options
  rng = np.random.default_rng([seed, 7, step])
  n = len(pool.profession)
  outer = rng.choice(n, batch_size, replace=False)
  take = lambda idx: {k: jnp.asarray(v[idx]) for k, v in pool.inputs.items()}
  batch = {'inputs': take(outer), 'desired': jnp.asarray(pool.profession[outer]),
           'harmful': jnp.asarray(pool.gender[outer])}
  if program.adversarial:
    batch['num_steps'] = jnp.asarray(options.num_steps, jnp.int32)
    batch['adversary_weights'] = jnp.asarray(
        np.arange(program.num_adversaries) < options.num_adversaries, jnp.float32)
  if program.adversarial and program.num_steps:
    inner = rng.integers(0, n, (program.num_adversaries, program.num_steps, program.max_batch))
    batch['inner_inputs'] = take(inner)
    batch['inner_harmful'] = jnp.asarray(pool.gender[inner])
  return batch


def _meta_record(c: ml_collections.ConfigDict, name: str, source: str) -> dict[str, Any]:
  return {**_pretrain_record(c), 'encoder': source, 'bert_path': c.bert_path,
          'vocab_path': c.vocab_path, 'model': name, 'meta': c.meta.to_dict(),
          'options': str(mlac_options(c, name)), 'program': str(program_options(c, name))}


@functools.lru_cache(maxsize=8)
def meta_program(apply, feature_dim: int, options: MLACOptions, seed: int):
  """(`make_mlac(...)`, its jitted outer step), one per (encoder, options, seed): the models
  that share `program_options` share the compiled step."""
  mlac = make_mlac(apply, feature_dim=feature_dim, num_desired=len(PROFESSIONS),
                   num_harmful=len(GENDERS), options=options)
  key = jax.random.fold_in(jax.random.key(seed), 1)
  return mlac, jax.jit(lambda s, b: mlac.step(s, b, key))


def meta_train(c: ml_collections.ConfigDict, workdir: str, name: str, encoder: Encoder,
               pool: Split, *, progress: bool = True) -> Any:
  """Meta-trains model `name` from the encoder in `workdir/meta/<name>` (resuming).

  Returns:
    The final `MLACState` (encoder in `params['encoder']`, profession head in
    `params['head']`).
  """
  options, program = mlac_options(c, name), program_options(c, name)
  folder = os.path.join(workdir, 'meta', name)
  run_config.prepare_workdir(folder, _meta_record(c, name, encoder.source))
  dim = jax.eval_shape(lambda: encoder.model.apply(
      encoder.variables, {k: v[:1] for k, v in pool.inputs.items()}).features).shape[-1]
  mlac, step = meta_program(encoder.model.apply, dim, program, c.seed)
  key = jax.random.key(c.seed)
  device = jax.local_devices()[0]
  return train.run_loop(
      init=lambda: jax.device_put(mlac.init(encoder.variables, key=jax.random.fold_in(key, 2)),
                                  device),
      step_fn=step,
      batch_fn=lambda i: meta_batch(pool, options, i, batch_size=c.meta.batch_size,
                                    seed=c.seed, program=program),
      num_steps=c.meta.num_steps, workdir=folder, checkpoint_every=c.checkpoint_every,
      log_every=c.log_every, progress=progress)


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnums=0)
def head_accuracy(apply, variables: Any, head: Array, inputs: dict[str, Array],
                  labels: Array) -> Array:
  """Accuracy of `features(apply(variables, inputs)) @ head` [D, C] on `labels` [N]."""
  logits = apply(variables, inputs).features @ head
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def canonical(tree: Any) -> Any:
  """`tree` as strongly typed arrays committed to the first device, so every model's
  variables hit the same compiled attack programs (jit specialises on committed vs
  uncommitted inputs and on weak types)."""
  strong = jax.tree.map(lambda a: jnp.array(a, dtype=jnp.asarray(a).dtype), tree)
  return jax.device_put(strong, jax.local_devices()[0])


def t_interval(values: np.ndarray) -> tuple[float, float]:
  """(mean, half-width of the 95% t interval over the values)."""
  values = np.asarray(values, np.float64)
  n = len(values)
  half = float(scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
  return float(values.mean()), half


class ModelResult(NamedTuple):
  """One model's numbers.

  Attributes:
    harmful: n -> (mean harmful accuracy of the re-runs, 95% t half-width, the re-runs).
    best: n -> the attacker's chosen setting.
    desired: desired-task (profession) accuracy on the test split, or None (no head).
    meta_metrics: the last logged meta-training metrics (harmful accuracy after each
      inner step on the outer batch, ...), or {}.
  """
  harmful: dict[int, tuple[float, float, list[float]]]
  best: dict[int, dict[str, Any]]
  desired: float | None
  meta_metrics: dict[str, Any]


class Results(NamedTuple):
  """The numbers of one run (what the report is written from).

  Attributes:
    models: name -> `ModelResult`, in table order.
    majority: accuracy of always answering the held-out set's majority gender.
    profession_floor: held-out accuracy of predicting gender from the true profession
      (the pool's majority gender per profession): what a profession-preserving model
      cannot hide.
    desired_chance: accuracy of always answering the test split's majority profession.
    encoder: where the encoder came from; pretrain_steps: MLM steps (0 when loaded).
    stage_seconds: stage name -> wall seconds of this launch.
  """
  models: dict[str, ModelResult]
  majority: float
  profession_floor: float
  desired_chance: float
  encoder: str
  pretrain_steps: int
  stage_seconds: dict[str, float]


def attack_model(c: ml_collections.ConfigDict, apply, variables: Any, pool: Split,
                 val: Split) -> tuple[dict, dict]:
  """The attacker at every n on one encoder: ({n: (mean, half, re-runs)}, {n: best})."""
  grid = attack_grid(c)
  harmful, best = {}, {}
  for i, n in enumerate(grid['ns']):
    result = attacker.attack_search(
        apply, variables, pool.inputs, pool.gender, val.inputs, val.gender,
        num_classes=len(GENDERS), n_train=n,
        key=jax.random.fold_in(jax.random.key(c.attack_seed), i),
        learning_rates=grid['learning_rates'], batch_sizes=grid['batch_sizes'],
        steps=grid['steps'], modes=grid['modes'], eval_every=c.attack_eval_every,
        num_search_seeds=c.attack_search_seeds, num_reruns=c.attack_reruns,
        max_n=max(grid['ns']))
    mean, half = t_interval(result.rerun_accuracy)
    harmful[n] = (mean, half, [float(a) for a in result.rerun_accuracy])
    best[n] = result.best
  return harmful, best


def profession_majority(pool: Split) -> np.ndarray:
  """int32 [28]: the majority gender of each profession in `pool` (0 where absent)."""
  counts = np.zeros((len(PROFESSIONS), len(GENDERS)))
  np.add.at(counts, (pool.profession, pool.gender), 1)
  return np.argmax(counts, axis=1).astype(np.int32)


def _last_metrics(folder: str) -> dict[str, Any]:
  path = os.path.join(folder, 'metrics.jsonl')
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return lines[-1] if lines else {}


def run(c: ml_collections.ConfigDict, workdir: str, *, progress: bool = True
        ) -> markdown.Section:
  """Builds the encoder, meta-trains the models (resuming), attacks each; returns the section.

  Raises:
    ValueError: a bad config (naming `config.<key>`), bad data (an empty text, a label out
      of range), a vocabulary that does not match the checkpoint, or a workdir stage that
      holds a run under another config.
  """
  validate_config(c)
  times, start = {}, time.perf_counter()
  pool_ds = load_texts(c, 'train', c.num_train)
  pool_texts = list(pool_ds.text[:c.num_train])
  if c.bert_path:
    encoder = load_encoder(c)
  else:
    encoder = pretrain(c, workdir, pool_texts, progress=progress)
  times['encoder (vocabulary + MLM pretraining or load)'] = time.perf_counter() - start
  start = time.perf_counter()
  pool = encode(pool_texts, pool_ds.profession[:c.num_train], pool_ds.gender[:c.num_train],
                encoder.tokenizer, 'train')
  val = load_split(c, 'validation', c.num_val, encoder.tokenizer)
  test = load_split(c, 'test', c.num_test, encoder.tokenizer)
  times['tokenising'] = time.perf_counter() - start
  apply = encoder.model.apply
  test_inputs = jax.tree.map(jnp.asarray, test.inputs)
  results = {}
  for name in model_names(c):
    start = time.perf_counter()
    head, metrics = None, {}
    if name == 'random':
      variables = encoder.model.init(jax.random.key(c.seed + 1))
    elif name == 'pretrained':
      variables = encoder.variables
    else:
      state = meta_train(c, workdir, name, encoder, pool, progress=progress)
      variables, head = state.params['encoder'], state.params['head']
      metrics = _last_metrics(os.path.join(workdir, 'meta', name))
      for key in ('harmful_acc_steps', 'harmful_ce_steps'):   # the shared program's K_max
        if key in metrics:                                    # steps: keep the model's K
          metrics[key] = metrics[key][:mlac_options(c, name).num_steps + 1]
    if head is not None:
      times[f'meta-training {name}'] = time.perf_counter() - start
    variables = canonical(variables)
    start = time.perf_counter()
    desired = (None if head is None else
               float(head_accuracy(apply, variables, head, test_inputs,
                                   jnp.asarray(test.profession))))
    harmful, best = attack_model(c, apply, variables, pool, val)
    times[f'attack {name}'] = time.perf_counter() - start
    results[name] = ModelResult(harmful, best, desired, metrics)
    logging.info('tamper resistance: %s harmful %s desired %s', name,
                 {n: round(h[0], 3) for n, h in harmful.items()}, desired)
  majority = float(max(np.mean(val.gender), 1 - np.mean(val.gender)))
  floor = float(np.mean(profession_majority(pool)[val.profession] == val.gender))
  desired_chance = float(np.bincount(test.profession, minlength=len(PROFESSIONS)).max()
                         / len(test.profession))
  out = Results(results, majority, floor, desired_chance, encoder.source, encoder.pretrain_steps,
                times)
  return report.section(c, out, workdir)
