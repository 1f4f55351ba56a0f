"""Finding tensors in modules: dotted names, patterns, tied tensors and parametrize's bookkeeping.

Modules: :mod:`~.modules` (``locate``, ``TensorRef``, shared-storage detection, the transform attached
to a tensor) and :mod:`~.patterns` (``"encoder.*.weight"`` and dict targets).

May import: torch, :mod:`paramshape.errors` and :mod:`paramshape.transforms.base`.
"""
