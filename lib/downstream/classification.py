"""Image classification on a foundation encoder: zero-shot, linear probe, fine-tuning.

  zero-shot     logits = scale * cos(image_embedding, class_embeddings)   (CLIP, Radford
                et al. 2021, §3.1.4; class embeddings averaged over prompt templates, the
                "prompt ensembling" of §3.1.4: each prompt's embedding is L2-normalised,
                the mean over templates is normalised again)
  linear probe  `LinearHead` on the frozen image embedding   fit_head(..., frozen=PROBE)
  fine-tune     the same head with the encoder trainable     fit_head(..., frozen=FINETUNE)

Accuracy is top-1 over the whole split.

    >>> texts = prompt_texts(['circle', 'square'], ('a photo of a {}.', 'a {} shape.'))
    >>> classes = average_prompts(encode_text(texts).reshape(2, 2, -1))     # [K, E]
    >>> zero_shot_accuracy(encode, encoder_params, classes, test_split)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import validate
from lib.downstream import _layers
from lib.downstream.features import Encode, Features, check_embeddings
from lib.downstream.fitting import encode_features, predictions

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / ||x|| along `axis` (a zero vector stays zero)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def prompt_texts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
  """The K * M prompts, class-major: template.format(name) for each class, each template.

  Raises:
    ValueError: no class names, no templates, or a template without one '{}'.
  """
  if not class_names or isinstance(class_names, str):
    raise ValueError(f'class_names must be a non-empty sequence of strings; got {class_names!r}.')
  if not templates or isinstance(templates, str):
    raise ValueError(f'templates must be a non-empty sequence of strings; got {templates!r}.')
  for template in templates:
    if template.count('{}') != 1:
      raise ValueError(f"every template must contain one '{{}}'; got {template!r}.")
  return [template.format(name) for name in class_names for template in templates]


def average_prompts(prompt_embeddings: Array) -> Array:
  """Class embeddings [K, E] from prompt embeddings [K, M, E] (CLIP's prompt ensembling).

  Each prompt embedding is L2-normalised, averaged over the M templates and normalised again.
  """
  if getattr(prompt_embeddings, 'ndim', None) != 3:
    raise ValueError('prompt_embeddings must have shape [K, M, E] (classes, templates, '
                     f'width); got {getattr(prompt_embeddings, "shape", None)}.')
  return l2_normalize(l2_normalize(prompt_embeddings).mean(axis=1))


def zero_shot_logits(image_embedding: Array, class_embeddings: Array, *,
                     scale: float = 100.0) -> Array:
  """CLIP's zero-shot logits [B, K]: scale * cos(image_embedding [B, E], class_embeddings [K, E]).

  `scale` is CLIP's learned logit scale exp(t) (100 for the released models); it does not
  change the argmax.
  """
  check_embeddings(class_embeddings, image_embedding.shape[-1], 'class_embeddings')
  return scale * l2_normalize(image_embedding) @ l2_normalize(class_embeddings).T


def accuracy(predictions: Any, labels: Any) -> float:
  """Top-1 accuracy of int predictions [N] against labels [N] (N >= 1)."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.ndim != 1 or predictions.shape != labels.shape or not labels.size:
    raise ValueError(f'predictions and labels must have the same shape [N], N >= 1; got '
                     f'{predictions.shape} and {labels.shape}.')
  return float(np.mean(predictions == labels))


@functools.partial(jax.jit, static_argnums=0)
def _zero_shot_predict(encode: Encode, params: Any, classes: Array, batch: dict) -> Array:
  features = encode_features(encode, params, batch['image'])
  return jnp.argmax(zero_shot_logits(features.image_embedding, classes), -1)


def zero_shot_accuracy(encode: Encode, encoder_params: Any, class_embeddings: Array,
                       dataset: Any, *, batch_size: int = 256) -> float:
  """Top-1 zero-shot accuracy over a split; label i is `class_embeddings[i]`.

  Raises:
    ValueError: class embeddings not [K, E], labels outside [0, K), an empty split.
  """
  class_embeddings = jnp.asarray(class_embeddings)
  check_embeddings(class_embeddings, None, 'class_embeddings')
  check = lambda b, n: validate.check_labels(b['label'], len(class_embeddings), f"{n}['label']")
  right, total = 0, 0
  for pred, batch in predictions(
      functools.partial(_zero_shot_predict, encode, encoder_params, class_embeddings), dataset,
      fields=('image',), needs=('label',), batch_size=batch_size, check=check):
    right, total = right + int(np.sum(pred == batch['label'])), total + len(pred)
  return right / total


@dataclasses.dataclass(frozen=True)
class LinearHead:
  """A dense layer on the image embedding: logits [B, K] = W emb + b (linear probe).

  Attributes:
    num_classes: K >= 2; labels lie in [0, K).
  """
  num_classes: int
  fields: ClassVar[tuple[str, ...]] = ('label',)

  def __post_init__(self):
    validate.check_int(self.num_classes, 'num_classes', minimum=2)

  def init(self, key: Array, features: Features) -> dict:
    return _layers.dense_init(key, features.image_embedding.shape[-1], self.num_classes)

  def logits(self, params: dict, features: Features) -> Array:
    """[B, K] logits of features (image_embedding [B, E])."""
    return _layers.dense(params, features.image_embedding)

  def loss(self, params: dict, features: Features,
           batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    logits = self.logits(params, features)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    return loss, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def check_batch(self, batch: Mapping[str, np.ndarray], name: str) -> None:
    _layers.check_int_field(batch, 'label', name, shape=(len(batch['image']),), low=0,
                            high=self.num_classes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _head_predict(head: Any, encode: Encode, params: dict, batch: dict) -> Array:
  features = encode_features(encode, params['encoder'], batch['image'])
  return jnp.argmax(head.logits(params['head'], features), -1)


def probe_accuracy(head: LinearHead, encode: Encode, params: dict, dataset: Any, *,
                   batch_size: int = 256) -> float:
  """Top-1 accuracy of a trained head over a split.

  Args:
    head: the trained `LinearHead`.
    encode: the encoder function.
    params: `HeadState.params` ({'encoder', 'head'}) from `fit_head`.
    dataset: the split (with 'label').
    batch_size: evaluation batch size.
  """
  right, total = 0, 0
  for pred, batch in predictions(functools.partial(_head_predict, head, encode, params), dataset,
                                 fields=('image',), needs=('label',), batch_size=batch_size,
                                 check=head.check_batch):
    right, total = right + int(np.sum(pred == batch['label'])), total + len(pred)
  return right / total


def class_embeddings(encode_text: Callable[[list[str]], Array], class_names: Sequence[str],
                     templates: Sequence[str]) -> Array:
  """[K, E] zero-shot class embeddings: `encode_text` on every prompt, then `average_prompts`.

  Args:
    encode_text: the caller's text tower, list of N strings -> [N, E] embeddings.
    class_names: K class names.
    templates: M prompt templates with one '{}' each.
  """
  texts = prompt_texts(class_names, templates)
  embeddings = jnp.asarray(encode_text(texts))
  if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
    raise ValueError(f'encode_text must return [N={len(texts)}, E] for N prompts; got '
                     f'{embeddings.shape}.')
  return average_prompts(embeddings.reshape(len(class_names), len(templates), -1))
