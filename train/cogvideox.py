"""`python -m train.cogvideox`: the RealGeneral CogVideoX two-frame LoRA recipe (code in `train.realgeneral.recipe`)."""

from train.realgeneral.recipe import main

if __name__ == "__main__":
    main()
