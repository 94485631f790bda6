"""`python -m train.infer_cogvideox`: one RealGeneral generation (code in `train.realgeneral.infer`)."""

from train.realgeneral.infer import main

if __name__ == "__main__":
    main()
