"""Text: tokenisers built on the `tokenizers` library (no hand-written BPE or WordPiece).

Modules: `clip_tokenizer` (CLIP's byte-level BPE from a user's vocab.json/merges.txt, or one
trained on the embedded captions), `wordpiece` (BERT's WordPiece from a user's vocab.txt, or
one trained on the embedded corpus). Each returns the `{'input_ids', 'attention_mask'}` batches
that `lib.models.inputs.Tokens` validates.
"""
