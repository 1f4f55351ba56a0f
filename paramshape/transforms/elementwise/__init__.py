"""Elementwise transforms: each value in its own set (``Box``, ``UnitInterval``, ``Positive``,
``GreaterThan``, ``LessThan``, ``SoftClip``, ``Affine``), and :mod:`~.bounds`, the shared handling of
bounds given as numbers or tensors.

May import: :mod:`paramshape.transforms.base`, :mod:`paramshape.transforms.registry`,
:mod:`paramshape.transforms.sets` and the layers below them.
"""
