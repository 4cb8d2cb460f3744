"""Visual question answering on a foundation encoder: answer classification, VQA accuracy.

`VQAHead` classifies over a fixed answer vocabulary (the standard VQA formulation, Antol et
al. 2015) from fused image and question features: the question is a bag of words (mean of
learned word embeddings over its non-padding tokens), which attends over the patch tokens
(one question-guided attention step, as in stacked attention networks, Yang et al. 2016);
the attended patches plus the projected image embedding are multiplied elementwise with the
question vector, then an MLP gives the answer logits. Batch fields: 'question_ids' int
[B, Q, Lq] (padding `pad_id`) and 'answer_ids' int [B, Q] (index into the answer
vocabulary); each image has Q questions (4 for shapes: shape, colour, count, background).

VQA accuracy (Antol et al. 2015; the official evaluation script): with M human answers per
question, acc = mean over the M leave-one-out subsets of min(#matches among the other
M - 1 answers / 3, 1), i.e. "min(#humans who gave that answer / 3, 1)" averaged over
annotator subsets; answers compare after lowercasing and stripping white space (the script's
punctuation, article and number-word normalisation is not applied). With a single
ground-truth answer per question (shapes), that answer is taken as unanimous (as if all
annotators gave it), so the accuracy is exact match.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import validate
from lib.downstream import _layers
from lib.downstream.features import Encode, Features
from lib.downstream.fitting import encode_features, predictions

Array = jax.Array


def vqa_accuracy(predictions: Sequence[str], answers: Any) -> float:
  """Mean VQA accuracy of predicted answers [N] against human answers [N] or [N, M].

  Args:
    predictions: N answer strings.
    answers: N ground-truth answers (one each: exact match), or [N, M] with M >= 2 human
      answers each (the official leave-one-out formula).

  Returns:
    A float in [0, 1].
  """
  answers = np.asarray(answers)
  if answers.ndim == 1:
    answers = answers[:, None]
  if answers.ndim != 2 or len(predictions) != len(answers) or not len(answers):
    raise ValueError(f'predictions [N] and answers [N] or [N, M] must match with N >= 1; got '
                     f'{len(predictions)} and shape {answers.shape}.')
  norm = np.vectorize(lambda s: str(s).strip().lower())
  matches = norm(answers) == norm(np.asarray(predictions, dtype=object))[:, None]   # [N, M]
  m = answers.shape[1]
  if m == 1:
    return float(matches.mean())
  others = matches.sum(1, keepdims=True) - matches       # matches among the other M - 1
  return float(np.minimum(others / 3.0, 1.0).mean())


@dataclasses.dataclass(frozen=True)
class VQAHead:
  """Answer classifier from question-guided attention over patch tokens.

  Attributes:
    num_answers: A >= 2, size of the answer vocabulary.
    vocab_size: V, question token ids in [0, V).
    dim: width of the fused features.
    pad_id: question padding id (ignored by the bag of words).
  """
  num_answers: int
  vocab_size: int
  dim: int = 64
  pad_id: int = 0
  fields: ClassVar[tuple[str, ...]] = ('question_ids', 'answer_ids')

  def __post_init__(self):
    validate.check_int(self.num_answers, 'num_answers', minimum=2)
    validate.check_int(self.vocab_size, 'vocab_size', minimum=2)
    validate.check_int(self.dim, 'dim', minimum=1)
    validate.check_int(self.pad_id, 'pad_id', minimum=0)

  def init(self, key: Array, features: Features) -> dict:
    keys = jax.random.split(key, 6)
    e_patch = features.patch_tokens.shape[-1]
    e_image = features.image_embedding.shape[-1]
    return {'embed': jax.random.normal(keys[0], (self.vocab_size, self.dim), jnp.float32),
            'key': _layers.dense_init(keys[1], e_patch, self.dim),
            'value': _layers.dense_init(keys[2], e_patch, self.dim),
            'image': _layers.dense_init(keys[3], e_image, self.dim),
            'hidden': _layers.dense_init(keys[4], self.dim, self.dim),
            'out': _layers.dense_init(keys[5], self.dim, self.num_answers)}

  def logits(self, params: dict, features: Features, question_ids: Array) -> Array:
    """Answer logits [B, Q, A] for question ids [B, Q, Lq]."""
    keep = (question_ids != self.pad_id).astype(jnp.float32)[..., None]
    words = jnp.take(params['embed'], question_ids, axis=0)
    q = (words * keep).sum(-2) / jnp.maximum(keep.sum(-2), 1.0)              # [B, Q, d]
    b, h, w, e = features.patch_tokens.shape
    tokens = features.patch_tokens.reshape(b, h * w, e)
    k, v = _layers.dense(params['key'], tokens), _layers.dense(params['value'], tokens)
    attention = jax.nn.softmax(jnp.einsum('bqd,bpd->bqp', q, k) / np.sqrt(self.dim), -1)
    seen = jnp.einsum('bqp,bpd->bqd', attention, v)
    seen = seen + _layers.dense(params['image'], features.image_embedding)[:, None]
    fused = jax.nn.relu(_layers.dense(params['hidden'], seen * q))
    return _layers.dense(params['out'], fused)

  def loss(self, params: dict, features: Features,
           batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    logits = self.logits(params, features, batch['question_ids'])
    labels = batch['answer_ids']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}

  def check_batch(self, batch: Mapping[str, np.ndarray], name: str) -> None:
    _layers.check_int_field(batch, 'question_ids', name, shape=(len(batch['image']), None, None),
                            low=0, high=self.vocab_size)
    _layers.check_int_field(batch, 'answer_ids', name,
                            shape=np.shape(batch['question_ids'])[:2], low=0,
                            high=self.num_answers)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _answer(head: VQAHead, encode: Encode, params: dict, batch: dict) -> Array:
  features = encode_features(encode, params['encoder'], batch['image'])
  return jnp.argmax(head.logits(params['head'], features, batch['question_ids']), -1)


def evaluate_vqa(head: VQAHead, encode: Encode, params: dict, dataset: Any, *,
                 answer_vocab: Sequence[str], batch_size: int = 64) -> dict[str, float]:
  """VQA accuracy of a trained head over a split, overall and per question slot.

  Args:
    head: the trained `VQAHead`.
    encode: the encoder function.
    params: `HeadState.params` ({'encoder', 'head'}).
    dataset: a split with 'question_ids' [N, Q, Lq] and 'answer' (str [N, Q], the ground
      truth the accuracy is computed against).
    answer_vocab: the A answer strings, index = answer id.
    batch_size: evaluation batch size.

  Returns:
    {'vqa_accuracy': over all questions, 'vqa_accuracy/q{j}': over slot j}.
  """
  if len(answer_vocab) != head.num_answers:
    raise ValueError(f'answer_vocab must have num_answers={head.num_answers} entries; got '
                     f'{len(answer_vocab)}.')
  vocab = np.asarray(answer_vocab, dtype=object)
  predicted, truth = [], []
  check = lambda b, n: _layers.check_int_field(b, 'question_ids', n, shape=(None, None, None),
                                               low=0, high=head.vocab_size)
  for ids, batch in predictions(functools.partial(_answer, head, encode, params), dataset,
                                fields=('image', 'question_ids'), needs=('answer',),
                                batch_size=batch_size, check=check):
    predicted.append(vocab[ids])
    truth.append(batch['answer'])
  predicted, truth = np.concatenate(predicted), np.concatenate(truth)
  metrics = {'vqa_accuracy': vqa_accuracy(predicted.ravel(), truth.ravel())}
  for j in range(truth.shape[1]):
    metrics[f'vqa_accuracy/q{j}'] = vqa_accuracy(predicted[:, j], truth[:, j])
  return metrics
