"""Evaluation of attribution maps under one name: localisation, faithfulness, sanity checks.

A re-export, so `metrics.pointing_game`, `metrics.deletion_curve`, ... keep working; the
metrics live in the modules of their job:

  localisation   to_heatmap, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
  faithfulness   deletion_curve, insertion_curve, probability, Curve
  sanity         model_randomisation, class_sensitivity, contrast_targets, Randomisation,
                 ClassSensitivity
"""

from lib.attribution.faithfulness import Curve, deletion_curve, insertion_curve, probability
from lib.attribution.localisation import (pointing_game, relevance_mass_accuracy,
                                          relevance_rank_accuracy, to_heatmap)
from lib.attribution.sanity import (ClassSensitivity, Randomisation, class_sensitivity,
                                    contrast_targets, model_randomisation)

__all__ = ['ClassSensitivity', 'Curve', 'Randomisation', 'class_sensitivity', 'contrast_targets',
           'deletion_curve', 'insertion_curve', 'model_randomisation', 'pointing_game',
           'probability', 'relevance_mass_accuracy', 'relevance_rank_accuracy', 'to_heatmap']
