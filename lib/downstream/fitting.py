"""`fit_head`: trains any downstream head on an encoder, frozen or not, resumably.

Every head (`classification.LinearHead`, `segmentation.DenseHead`, `detection.BoxHead`,
`captioning.Captioner`, `vqa.VQAHead`) is a frozen dataclass with

  fields                                  batch fields its loss reads besides 'image'
  init(key, features) -> head params      `features`: abstract `Features` (shapes only)
  loss(params, features, batch) -> (scalar loss, {metric: scalar})
  check_batch(batch, name)                host-side ValueError on bad labels or shapes

and `fit_head` trains `{'encoder': encoder_params, 'head': head_params}` with one optax
optimiser whose `frozen` patterns (`lib.train.make_optimizer(frozen=...)`, an
`optax.multi_transform`) keep the encoder fixed: `frozen=PROBE` is a linear probe or a head
on frozen features, `frozen=FINETUNE` fine-tunes encoder and head together, and any
other pattern ('encoder/params/blocks/0/*') freezes part of it. Frozen parameters receive
exactly zero updates, so they stay bit-identical; when the whole encoder is frozen it is
not differentiated at all (`stop_gradient`: a smaller program, compiled faster). The
encoder runs in evaluation mode (no dropout).

The loop is `lib.train.run_loop`: checkpoints in `workdir` (the encoder's parameters
included, so a fine-tuned run resumes exactly too), automatic resume, and batches that are
a function of (seed, step), so an interrupted run ends where an uninterrupted one does.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import data as data_lib
from lib import validate
from lib.downstream.features import Encode, Features, check_features
from lib.train.loop import run_loop
from lib.train.optim import make_optimizer

Array = jax.Array
PROBE = ('encoder/*',)
FINETUNE = ()


class Head(Protocol):
  """What `fit_head` trains (see the module docstring)."""
  fields: tuple[str, ...]

  def init(self, key: Array, features: Features) -> Any: ...

  def loss(self, params: Any, features: Features,
           batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]: ...

  def check_batch(self, batch: Mapping[str, np.ndarray], name: str) -> None: ...


class HeadState(NamedTuple):
  """Training state of a head.

  Attributes:
    step: int32 scalar, steps taken.
    params: {'encoder': encoder params, 'head': head params}.
    opt_state: optax state (holds the injected learning rate).
  """
  step: Array
  params: dict[str, Any]
  opt_state: optax.OptState


def encode_features(encode: Encode, encoder_params: Any, images: Array) -> Features:
  """`Features` of `images` [B, H, W, C] (shapes checked when traced)."""
  return check_features(encode(encoder_params, images))


def _train_step(head: Head, encode: Encode, optimizer: optax.GradientTransformation,
                encoder_frozen: bool, state: HeadState,
                batch: Mapping[str, Array]) -> tuple[HeadState, dict]:
  def objective(params):
    encoder = params['encoder']
    if encoder_frozen:  # its gradient would be zeroed anyway: do not differentiate it
      encoder = jax.lax.stop_gradient(encoder)
    features = encode_features(encode, encoder, batch['image'])
    return head.loss(params['head'], features, batch)

  (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, 'loss': loss, 'head_grad_norm': optax.global_norm(grads['head']),
             'learning_rate': opt_state.hyperparams['learning_rate']}
  return HeadState(state.step + 1, params, opt_state), metrics


def _init(head: Head, optimizer: optax.GradientTransformation, features: Features,
          encoder_params: Any, key: Array) -> HeadState:
  # A copy of the encoder: the jitted step donates the state, which must not delete the
  # caller's arrays.
  params = {'encoder': jax.tree.map(jnp.copy, encoder_params), 'head': head.init(key, features)}
  return HeadState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


# One program instead of one small compilation per eagerly initialised array.
_jitted_init = jax.jit(_init, static_argnums=(0, 1, 2))
_jitted_step = jax.jit(_train_step, static_argnums=(0, 1, 2, 3), donate_argnums=4)
# One optimiser object per set of options, so the jitted step (static in the optimiser)
# compiles once however many runs use them (a resumed run, seeds, probe after probe).
_optimizer = functools.lru_cache(maxsize=32)(make_optimizer)


def check_split(dataset: Any, name: str) -> None:
  """Raises ValueError when `dataset` is not a non-empty `lib.data` split."""
  if not hasattr(dataset, 'get') or not hasattr(dataset, '__len__'):
    raise ValueError(f'{name} must be a lib.data dataset; got {type(dataset).__name__}.')
  if len(dataset) == 0:
    raise ValueError(f'{name} is empty; expected at least one example.')


def _device_batch(head: Head, batch: Mapping[str, np.ndarray], name: str) -> dict[str, Array]:
  missing = [k for k in ('image', *head.fields) if k not in batch]
  if missing:
    raise ValueError(f'{name} lacks the field(s) {missing} that {type(head).__name__} needs.')
  head.check_batch(batch, name)
  return {k: jnp.asarray(batch[k]) for k in ('image', *head.fields)}


def fit_head(head: Head, encode: Encode, encoder_params: Any, train_data: Any, *,
             num_steps: int, batch_size: int, seed: int, workdir: str,
             frozen: Sequence[str] = PROBE, optimizer: str = 'adamw',
             learning_rate: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 0,
             checkpoint_every: int = 100, log_every: int = 10,
             eval_fn: Callable[[HeadState], Mapping[str, Any]] | None = None,
             eval_every: int | None = None, progress: bool = False) -> HeadState:
  """Trains `head` on the features of `encode`, resuming from `workdir` if possible.

  Args:
    head: a head (see the module docstring), a hashable frozen dataclass.
    encode: `encode(params, images) -> (patch_tokens, image_embedding)`, hashable
      (`lib.downstream.features`).
    encoder_params: the encoder's parameters (the starting point when fine-tuning).
    train_data: a `lib.data` split holding 'image' and `head.fields`.
    num_steps, batch_size: the schedule (ints >= 1; batch_size at most the split's size).
    seed: int >= 0; head initialisation and data order derive from it.
    workdir: checkpoints and metrics (`lib.train.run_loop`).
    frozen: `fnmatch` patterns over 'encoder/...' and 'head/...' parameter paths that stay
      fixed: `PROBE` (the encoder) or `FINETUNE` (nothing).
    optimizer, learning_rate, weight_decay, warmup_steps: `lib.train.make_optimizer`
      options (cosine decay over `num_steps`).
    checkpoint_every, log_every, eval_every: intervals in steps.
    eval_fn: `state -> metrics`, logged every `eval_every` steps and at the end.
    progress: report progress (`lib.train.progress`).

  Returns:
    The final `HeadState`.

  Raises:
    ValueError: an empty or unsuitable split, a bad batch (labels out of range, wrong
      shapes: `head.check_batch`), an encoder whose outputs break the interface, a frozen
      pattern matching nothing, or a bad schedule option.
  """
  check_split(train_data, 'train_data')
  validate.check_int(seed, 'seed', minimum=0)
  validate.check_int(batch_size, 'batch_size', minimum=1)
  validate.check_bool(progress, 'progress')
  opt = _optimizer(name=optimizer, learning_rate=learning_rate, num_steps=num_steps,
                   warmup_steps=warmup_steps, weight_decay=weight_decay, schedule='cosine',
                   frozen=tuple(frozen))
  batch_fn = lambda i: _device_batch(head, data_lib.batch_at(
      train_data, i, batch_size=batch_size, seed=seed), 'train_data')
  example = batch_fn(0)['image']
  abstract = jax.eval_shape(functools.partial(encode_features, encode), encoder_params, example)
  init_key = jax.random.key(seed)
  init = lambda: _jitted_init(head, opt, abstract, encoder_params, init_key)
  paths = ['encoder/' + '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(encoder_params)[0]]
  encoder_frozen = all(any(fnmatch.fnmatchcase(p, q) for q in frozen) for p in paths)
  step = lambda state, batch: _jitted_step(head, encode, opt, encoder_frozen, state, batch)
  return run_loop(init=init, step_fn=step, batch_fn=batch_fn, num_steps=num_steps,
                  workdir=workdir, checkpoint_every=checkpoint_every, log_every=log_every,
                  eval_fn=eval_fn, eval_every=eval_every, progress=progress)


def predictions(predict: Callable[[dict[str, Array]], Any], dataset: Any, *, fields: Sequence[str],
                batch_size: int, needs: Sequence[str] = (), name: str = 'dataset',
                check: Callable[[Mapping[str, np.ndarray], str], None] | None = None
                ) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
  """Yields `(predict(batch) as numpy, host batch)` over a whole split, valid rows only.

  Args:
    predict: a jitted `batch -> pytree of [B, ...] arrays` (compiled once: every batch has
      the same shape, see `lib.data.eval_batches`).
    dataset: the split.
    fields: batch fields `predict` reads.
    batch_size: evaluation batch size.
    needs: further fields the caller reads from the host batch (e.g. the ground truth).
    name: the split's argument name, for messages.
    check: optional host-side `check(batch, name)` run on every batch first.
  """
  check_split(dataset, name)
  validate.check_int(batch_size, 'batch_size', minimum=1)
  for batch in data_lib.eval_batches(dataset, batch_size):
    missing = [k for k in (*fields, *needs) if k not in batch]
    if missing:
      raise ValueError(f'{name} lacks the field(s) {missing}.')
    if check is not None:
      check(batch, name)
    out = jax.tree.map(np.asarray, predict({k: jnp.asarray(batch[k]) for k in fields}))
    valid = batch['valid']
    yield jax.tree.map(lambda a: a[valid], out), {k: v[valid] for k, v in batch.items()}
