"""Training: optimisers, the supervised step, a resumable loop, and one-seed `fit`.

  * `optim`: `make_optimizer` (warmup + decay, injected learning rate, frozen groups),
    `freeze`, `set_learning_rate`.
  * `state`: `TrainState(step, variables, opt_state)`, `init_state`.
  * `classification`: `train_step` (pure; loss injected as `loss_fn(logits, batch)`),
    `SoftmaxCrossEntropy`, `augment`.
  * `loop`: `run_loop`, generic over any state and `step_fn(state, batch)`: resumes from
    the newest readable checkpoint (abstract target), host sync only at log, eval and
    checkpoint steps, `NonFiniteLossError` on a NaN/Inf loss; `Layout` for states saved in
    another form than they run in (sequential seed sweeps, `lib.sweep`).
  * `fitting`: `fit` (one seed end to end) and `evaluate`, each compiled once per process.
  * `progress`: a tqdm bar on a terminal, periodic log lines when output goes to a file.

Contrastive pretraining or meta-training bring their own step and call `run_loop`.
"""

from lib.train.classification import (SoftmaxCrossEntropy, augment, check_step_options,
                                      train_step)
from lib.train.fitting import evaluate, fit, numeric_fields
from lib.train.loop import Layout, NonFiniteLossError, run_loop, to_host
from lib.train.optim import freeze, make_optimizer, set_learning_rate
from lib.train.state import TrainState, init_state

__all__ = [
    'Layout', 'NonFiniteLossError', 'SoftmaxCrossEntropy', 'TrainState', 'augment',
    'check_step_options', 'evaluate', 'fit', 'freeze', 'init_state', 'make_optimizer',
    'numeric_fields', 'run_loop', 'set_learning_rate', 'to_host', 'train_step',
]
