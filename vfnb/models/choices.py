"""The networks vfnb can build, by name, without importing torch.

The training configuration checks ``backbone`` and ``head`` against these before any
network is built (``vfnb train --help`` and ``vfnb study`` validate parameters in a
process that need not load torch); :mod:`vfnb.models.networks` builds each of them.
"""

BACKBONES = ("resnet10", "resnet18", "seresnet50")  # see vfnb.models.networks for each
HEADS = ("linear", "mlp")                          # the projection head: one Linear, or Linear-ReLU-Linear
