"""`python -m train.infer_fill`: solve a visual-cloze grid with a VisualCloze LoRA (`train.visualcloze.infer`)."""

from train.visualcloze.infer import main

if __name__ == "__main__":
    main()
