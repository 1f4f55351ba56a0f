"""Transforms made from outside objects: ``torch.distributions`` constraints and transforms
(:mod:`~.distributions`: ``TorchTransform``, ``from_constraint``) and pairs of functions
(:mod:`~.function`: ``FunctionTransform``).

May import: :mod:`paramshape.transforms` (the families, to map a torch constraint onto paramshape's
own transform) and the layers below.
"""
