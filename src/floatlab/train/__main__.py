"""``python -m floatlab.train ...`` and ``torchrun --nproc_per_node N -m floatlab.train ...``."""

from floatlab.cli.train import main

if __name__ == "__main__":
    main()
