"""Networks and their files: ``model`` (ResNet, MLP, shaping potentials), ``policy`` (the one masked
``Policy`` every player and algorithm goes through), ``checkpoint`` (the one checkpoint format)."""
