"""Every study's config builds for every variant it documents; the main job's per-study args."""

import importlib

import pytest

from experiments import main

# The variants each study's module docstring documents ('' = full scale), with combinations.
DOCUMENTED = {
    'classifier': ['', 'runlocal', 'digits', 'runlocal,digits', 'cifar10', 'cifar10,wrn'],
    'seed_sweep': ['', 'runlocal', 'digits', 'cifar10', 'cifar10,wrn'],
    'attribution_integrity': ['', 'runlocal'],
    'robustness': ['', 'runlocal', 'digits', 'cifar10', 'cifar10,wrn'],
    'foundation_targets': ['', 'runlocal'],
    'foundation_transfer': ['', 'runlocal'],
    'purification_robustness': ['', 'runlocal', 'digits', 'cifar10', 'cifar10,wrn'],
    'tamper_resistance': ['', 'runlocal'],
}


@pytest.mark.parametrize('study, arg', [(s, a) for s, args in DOCUMENTED.items() for a in args])
def test_every_documented_variant_builds(study, arg):
  c = importlib.import_module(f'experiments.{study}').get_config(arg)
  assert c.get('num_steps', 1) > 0 and len(c) > 1


def test_every_study_of_the_main_job_has_documented_variants():
  assert set(main.STUDIES) <= set(DOCUMENTED)


@pytest.mark.parametrize('arg, shared, own', [
    ('runlocal', 'runlocal', {}),
    ('', '', {}),
    ('classifier=cifar10', '', {'classifier': 'cifar10'}),
    ('runlocal,classifier=cifar10+wrn', 'runlocal', {'classifier': 'cifar10,wrn'}),
    ('runlocal,classifier=', 'runlocal', {'classifier': ''}),
    ('classifier=digits,attribution_integrity=runlocal', '',
     {'classifier': 'digits', 'attribution_integrity': 'runlocal'}),
])
def test_study_args(arg, shared, own):
  """Every study gets the shared variants unless an item names its own."""
  assert main.study_args(arg) == {name: own.get(name, shared) for name in main.STUDIES}


@pytest.mark.parametrize('arg', ['runlocal', '', 'classifier=cifar10',
                                 'runlocal,classifier=cifar10+wrn',
                                 'classifier=digits,attribution_integrity=runlocal'])
def test_main_config_matches_each_study_config(arg):
  c = main.get_config(arg)
  assert c.studies.split(',') == list(main.STUDIES)
  for study, study_arg in main.study_args(arg).items():
    own = importlib.import_module(f'experiments.{study}').get_config(study_arg)
    assert c[study].to_dict() == own.to_dict()


@pytest.mark.parametrize('arg, study, valid', [
    ('cifar10', 'attribution_integrity', "['runlocal']"),
    ('attribution_integrity=cifar10', 'attribution_integrity', "['runlocal']"),
    ('classifier=bogus', 'classifier', "['runlocal', 'digits', 'cifar10', 'wrn']"),
])
def test_invalid_variant_names_study_and_valid_variants(arg, study, valid):
  with pytest.raises(ValueError) as info:
    main.get_config(arg)
  assert f'study {study!r}' in str(info.value) and valid in str(info.value)


@pytest.mark.parametrize('arg, match', [
    ('bogus=runlocal', r"unknown study 'bogus'; expected any of \['classifier'"),
    ('classifier=digits,classifier=runlocal', "names study 'classifier' twice"),
])
def test_malformed_main_args_raise(arg, match):
  with pytest.raises(ValueError, match=match):
    main.get_config(arg)


def test_study_configs_share_the_classifier_only_under_equal_classifier_keys():
  c = main.get_config('runlocal')
  configs = main.study_configs(c, '/w')
  assert configs['robustness'].classifier_workdir == '/w/classifier'
  assert c.robustness.classifier_workdir == ''          # the recorded config is untouched
  c.robustness.num_steps += 1                           # another classifier: trains its own
  assert main.study_configs(c, '/w')['robustness'].classifier_workdir == ''
  c.studies = 'robustness'                              # no classifier study: trains its own
  assert main.study_configs(c, '/w')['robustness'].classifier_workdir == ''


def test_study_configs_link_the_transfer_to_the_targets_folder():
  c = main.get_config('runlocal')
  c.foundation_targets.num_test = 7
  transfer = main.study_configs(c, '/w')['foundation_transfer']
  assert transfer.targets_workdir == '/w/foundation_targets' and transfer.num_test == 7
