"""The training guide's entry point.

python src/train_generative.py --config-name=train_fb_flow_matching [overrides]
python src/train_generative.py --config-name=train_hf_diffusion [overrides]
"""

from goalgen.train.entry import main

if __name__ == "__main__":
    main()
