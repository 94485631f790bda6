"""The two training recipes: `train.visualcloze` (FLUX.1-Fill LoRA on grids) and
`train.realgeneral` (CogVideoX two-frame LoRA), with their shared parts in `train.common`.
`python -m train.fill | train.cogvideox | train.infer_fill | train.infer_cogvideox` are the
entry points."""
