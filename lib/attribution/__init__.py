"""Attribution kernels: methods, the softmax-invariant manipulation, agreement, metrics, audit.

Every method has the signature `method(apply, params, x, target, *, score='logit', key=None,
...) -> maps`, where `apply(params, x, **kw)` follows `lib.contract` (it returns `Outputs`,
a `(logits, taps)` tuple or bare logits; CAM methods need taps, LRP a `rules` keyword) and
`score` picks what is explained: 'logit' (pre-softmax), 'probability', 'log_probability' or
'logit_difference' (see `scores`). `registry` names them all.

Modules:
  scores                 the explained score and the shared gradient helpers
  gradients              saliency, gradient × input
  integrated_gradients   Riemann and Gauss-Legendre IG with completeness delta
  smoothgrad             SmoothGrad / SmoothGrad² / VarGrad over any method
  gradcam                Grad-CAM, Grad-CAM++, HiResCAM at any named tap
  lrp                    LRP as modified gradients: `lrp`, `lrp_layer` (rules re-exported)
  lrp_rules              LRP rules (ε, γ, z⁺, αβ, flat, w², z^B) and composites
  occlusion              sliding-window occlusion
  registry               methods by name: function, supported scores, tap, stochastic
  heatmaps               heatmaps of many methods × scores × models at once
  manipulate             Lerma & Lucas's softmax-invariant manipulation (the wrapper)
  constructions          the term t(x) of each construction, and the adaptive strengths
  invariance             how far the manipulation moves the probabilities (float32, float64)
  ranking                top-k and whole-ranking agreement (Krishna et al.), Spearman
  similarity             SSIM of heatmaps
  agreement              every agreement metric by name, and over all pairs of methods
  localisation           pointing game, relevance mass / rank accuracy, `to_heatmap`
  faithfulness           deletion / insertion curves
  sanity                 model randomisation and class-sensitivity checks
  metrics                localisation, faithfulness and sanity under one name
  audit                  per-input and model-level detection of the manipulation
"""

from lib.attribution import (agreement, audit, constructions, faithfulness, gradcam, gradients,
                             heatmaps, integrated_gradients, invariance, localisation, lrp,
                             lrp_rules, manipulate, metrics, occlusion, ranking, registry, sanity,
                             scores, similarity, smoothgrad)
from lib.attribution.gradcam import grad_cam, grad_cam_plus_plus, hires_cam
from lib.attribution.gradients import gradient_x_input, saliency

__all__ = ['agreement', 'audit', 'constructions', 'faithfulness', 'grad_cam',
           'grad_cam_plus_plus', 'gradcam', 'gradient_x_input', 'gradients', 'heatmaps',
           'hires_cam', 'integrated_gradients', 'invariance', 'localisation', 'lrp', 'lrp_rules',
           'manipulate', 'metrics', 'occlusion', 'ranking', 'registry', 'saliency', 'sanity',
           'scores', 'similarity', 'smoothgrad']
