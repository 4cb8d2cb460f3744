"""The main job end to end at a tiny scale: every study runs and writes its report section.

About 100 s on 2 CPU cores, nearly all of it XLA compilation.
"""

import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The classifier's keys, equal in every study that attacks it: they share one training run.
CLASSIFIER = ['num_steps=6', 'warmup_steps=1', 'batch_size=16', 'num_train=200', 'eval_every=6',
              'checkpoint_every=3']


TAMPER = ['num_train=120', 'num_val=16', 'num_test=16', 'max_len=16', 'pretrain.vocab_size=120',
          'pretrain.hidden_size=16', 'pretrain.num_hidden_layers=1',
          'pretrain.num_attention_heads=2', 'pretrain.intermediate_size=32', 'pretrain.num_steps=4',
          'pretrain.batch_size=8', 'pretrain.warmup_steps=1', 'mlac_k=1', 'k_sweep=1',
          'num_adversaries=2', 'meta.num_steps=2', 'meta.batch_size=8', 'meta.inner_batch_sizes=2,4',
          'meta.calibration_iters=10', 'attack_ns=8,16', 'attack_lrs=1e-3,1e-2',
          'attack_steps=5,10', 'attack_eval_every=5', 'attack_batch_sizes=4', 'attack_reruns=2',
          'checkpoint_every=1', 'log_every=1',
          # First-order meta-gradients: the second-order program's compile (~1 min) is tested
          # in tests/meta and by the study's own slow test.
          'meta.first_order=true']


def test_main_job_writes_report_with_every_study(tmp_path):
  tiny = {
      'classifier': CLASSIFIER,
      'robustness': [*CLASSIFIER, 'num_eval=8', 'linf_eps=8',
                     'l2_eps=0.5', 'pgd_steps=2', 'apgd_steps=2', 'square_queries=4',
                     'n_target_classes=1'],
      'attribution_integrity': ['num_seeds=2', 'num_steps=4', 'warmup_steps=1', 'batch_size=16',
                                'num_train=200', 'num_eval=8', 'num_audit=4', 'strengths=1,100',
                                'ig_steps=2', 'smoothgrad_samples=2', 'checkpoint_every=2'],
      'foundation_targets': [
          'num_train=64', 'num_test=32', 'batch_size=16', 'num_steps=4', 'warmup_steps=1',
          'checkpoint_every=2', 'log_every=2', 'num_figure=2',
          *[f'model.{k}={v}' for k, v in dict(
              vision_hidden_size=32, vision_layers=2, vision_heads=2, vision_intermediate_size=32,
              text_hidden_size=32, text_layers=1, text_heads=2, text_intermediate_size=32,
              projection_dim=16).items()],
          *[f'heads.{h}.{k}={v}' for h in ('probe', 'finetune', 'dense', 'boxes', 'captioner',
                                            'vqa') for k, v in (('num_steps', 2), ('batch_size', 8))],
          'heads.captioner.dim=16', 'heads.captioner.depth=1', 'heads.captioner.heads=2',
          'heads.captioner.mlp_dim=16',
          *[f'num_eval.{m}=16' for m in ('classification', 'segmentation', 'detection',
                                         'captioning', 'vqa')]],
      # Its targets are foundation_targets' (experiments/main.py links the two).
      'foundation_transfer': ['attack.num_images=16', 'attack.steps=2', 'attack.pgd_steps=2',
                              'fare.num_steps=2', 'fare.batch_size=8', 'fare.pgd_steps=2',
                              'fare.warmup_steps=0', 'deploy.eot=2', 'checks.num_images=8',
                              'checks.square_queries=5'],
      'tamper_resistance': TAMPER,
  }
  overrides = [f'--config.{study}.{kv}' for study, kvs in tiny.items() for kv in kvs]
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  out = subprocess.run(
      [sys.executable, '-m', 'launch.run', '--config=experiments/main.py:runlocal',
       f'--workdir={tmp_path}', *overrides],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-5000:]
  # The robustness study reads the classifier study's run instead of training its own.
  assert not os.path.exists(os.path.join(tmp_path, 'robustness', 'model'))
  report = open(os.path.join(tmp_path, 'report.md')).read()
  # It opens with the summary of every study's headline figures (one row at least per study).
  lines = report.split('\n')
  assert lines[:4] == ['# Security of foundation models: report', '',
                       '| study | figure | value |', '|---|---|---|']
  summary = lines[4:lines.index('', 4)]
  for study in ('Classifier', 'Explanation integrity', 'Adversarial robustness',
                'Foundation targets', 'Inherited vulnerability', 'Tamper resistance'):
    assert any(row.startswith(f'| {study}') for row in summary), summary
  # The checks see the planted gradient masking, whatever the (barely trained) model.
  (verdicts,) = [row for row in summary if 'check verdicts (honest / planted)' in row]
  assert verdicts.endswith('/ fail / fail |'), verdicts
  for heading in ('| study | wall time |', '## Classifier', '## Explanation integrity',
                  'max \\|Δp\\| float64', 'Pointing game', 'ROC AUC',
                  '## Adversarial robustness', '## Foundation targets',
                  '## Inherited vulnerability: attacks on the foundation alone',
                  '## Tamper resistance (MLAC)'):
    assert heading in report
  for figure in ('classifier/training_curves.png', 'classifier/samples.png',
                 'attribution_integrity/heatmaps.png', 'attribution_integrity/detection_auc.png',
                 'foundation_targets/targets.png', 'foundation_transfer/transfer_matrix.png',
                 'tamper_resistance/harmful_accuracy.png'):
    assert f']({figure})' in report and os.path.exists(os.path.join(tmp_path, figure))
