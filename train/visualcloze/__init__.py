"""VisualCloze (arXiv 2504.07960) on FLUX.1-Fill-dev: grid inputs (`inputs`), model pieces and
the objective (`model`), the recipe (`recipe`, `python -m train.fill`), inference (`infer`,
`python -m train.infer_fill`), the released LoRA layouts (`weights`) and the tiny offline model (`tiny`)."""
