"""RealGeneral (arXiv 2503.10406) on diffusers' CogVideoX: a condition image is frame 1, the target frame 2.

- `uce`: Unified Conditional Embedding (subject-keyword text embedding + task bias -> condition latent)
- `sc_adaln`: Separated Condition AdaLN (text / condition-frame / target-frame modulation)
- `fcd`: Frame-Condition Decoupling attention masks (variants A, B, C, none)
- `model`: the diffusers transformer with the three pieces wired in, LoRA, adapter save/load
- `encoders`: the frozen T5 / VAE / scheduler around it
- `recipe`: the training loop (`python -m train.cogvideox`); `infer`: generation
  (`python -m train.infer_cogvideox`); `tiny`: the tiny offline model
"""
