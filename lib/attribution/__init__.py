"""Attribution kernels: methods, the softmax-invariant manipulation, agreement, metrics, audit.

Every method has the signature `method(apply, params, x, target, *, score='logit', key=None,
...) -> maps`, where `apply(params, x, **kw)` returns logits or an object with `.logits` and
`.taps` (e.g. `lib.models.PureModel.apply`) and `score` picks what is explained: 'logit'
(pre-softmax), 'probability', 'log_probability' or 'logit_difference' (see `scores`).

Modules:
  scores                 the explained score and the shared gradient helpers
  gradients              saliency, gradient × input
  integrated_gradients   Riemann and Gauss-Legendre IG with completeness delta
  smoothgrad             SmoothGrad / SmoothGrad² / VarGrad over any method
  gradcam                Grad-CAM, Grad-CAM++, HiResCAM at any named tap
  lrp                    LRP rules (ε, γ, z⁺, αβ, flat, w², z^B) and composites
  occlusion              sliding-window occlusion
  manipulate             Lerma & Lucas's softmax-invariant manipulation and steering constructions
  agreement              Krishna et al. agreement metrics, Spearman, SSIM
  metrics                localisation, deletion/insertion, randomisation and class-sensitivity checks
  audit                  per-input and model-level detection of the manipulation
"""

from lib.attribution import (agreement, audit, gradcam, gradients, integrated_gradients, lrp,
                             manipulate, metrics, occlusion, scores, smoothgrad)
from lib.attribution.gradcam import grad_cam, grad_cam_plus_plus, hires_cam
from lib.attribution.gradients import gradient_x_input, saliency

__all__ = ['agreement', 'audit', 'grad_cam', 'grad_cam_plus_plus', 'gradcam', 'gradient_x_input',
           'gradients', 'hires_cam', 'integrated_gradients', 'lrp', 'manipulate', 'metrics', 'occlusion',
           'saliency', 'scores', 'smoothgrad']
