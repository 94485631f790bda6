"""`python -m train.fill`: the VisualCloze FLUX.1-Fill LoRA recipe (code in `train.visualcloze.recipe`)."""

from train.visualcloze.recipe import main

if __name__ == "__main__":
    main()
