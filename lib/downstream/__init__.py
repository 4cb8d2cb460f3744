"""Downstream "targets" built on a frozen foundation encoder, with the metrics papers report.

The inherited-vulnerability study (PRM, Hu et al. 2024) attacks an open encoder and measures
the damage on models built on it. These are those models, small and trainable in seconds,
each with the field's metric:

  classification  zero-shot (prompt ensembling), linear probe, fine-tune   top-1 accuracy
  segmentation    training-free MaskCLIP, a dense head on patch tokens     mIoU (mmseg)
  detection       regions of high patch-text similarity, CenterNet-lite    COCO mAP, AP50
  captioning      prefix-conditioned transformer decoder, greedy decoding  BLEU-4, CIDEr
  vqa             question-guided attention, answer classification         VQA accuracy

**The interface an encoder provides** (`features`): a hashable callable

    encode(params, images [B, H, W, C] in [0, 1]) -> (patch_tokens [B, h, w, E],
                                                      image_embedding [B, E])

with patch tokens (class token removed) and the pooled embedding in the joint image-text
space (CLIP: after the final LayerNorm and the visual projection; MaskCLIP's dense tokens
take the last attention layer's value path), and text embeddings [K, E] (class prompts,
detection queries) that the caller computes with its text tower and L2-normalises.
`features.TapEncoder(apply, tap, project=None)` builds `encode` from any ViT `apply` that
honours `lib.contract` (the headless 'vit' of `lib.models`); `project` maps the hidden
states into the embedding space, which the training-free heads need. The heads never import
an encoder: they are pure functions of these arrays and their own parameters.

**Training** (`fitting.fit_head`): one function for every head; `frozen=PROBE` keeps the
encoder fixed (optax `multi_transform` through `lib.train.make_optimizer(frozen=...)`),
`frozen=FINETUNE` trains it too; checkpointed and resumable through `lib.train.run_loop`.

    encode = TapEncoder(vit.apply, 'block1')
    head = LinearHead(num_classes=8)
    state = fit_head(head, encode, vit_variables, train, num_steps=300, batch_size=64,
                     seed=0, workdir='/tmp/probe')                  # frozen=PROBE
    probe_accuracy(head, encode, state.params, test)
"""

from lib.downstream.captioning import Captioner, caption_metrics, evaluate_captions
from lib.downstream.classification import (LinearHead, average_prompts, class_embeddings,
                                           probe_accuracy, prompt_texts, zero_shot_accuracy,
                                           zero_shot_logits)
from lib.downstream.detection import (BoxHead, Detections, coco_map, evaluate_detection,
                                      head_map, zero_shot_detect, zero_shot_map)
from lib.downstream.features import Encode, Features, TapEncoder
from lib.downstream.fitting import FINETUNE, PROBE, HeadState, fit_head
from lib.downstream.segmentation import (DenseHead, confusion_matrix, evaluate_segmentation,
                                         head_miou, maskclip_miou, maskclip_segment, mean_iou)
from lib.downstream.vqa import VQAHead, evaluate_vqa, vqa_accuracy

__all__ = [
    'FINETUNE', 'PROBE', 'BoxHead', 'Captioner', 'DenseHead', 'Detections', 'Encode',
    'Features', 'HeadState', 'LinearHead', 'TapEncoder', 'VQAHead', 'average_prompts',
    'caption_metrics', 'class_embeddings', 'coco_map', 'confusion_matrix', 'evaluate_captions',
    'evaluate_detection', 'evaluate_segmentation', 'evaluate_vqa', 'fit_head', 'head_map',
    'head_miou', 'maskclip_miou', 'maskclip_segment', 'mean_iou', 'probe_accuracy',
    'prompt_texts', 'vqa_accuracy', 'zero_shot_accuracy', 'zero_shot_detect', 'zero_shot_logits',
    'zero_shot_map',
]
