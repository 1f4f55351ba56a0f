"""Vector transforms: each slice along ``dim`` in its set (``Simplex``, ``SumToZero``, ``Ordered``,
``PositiveOrdered``, ``UnitNorm``), and :mod:`~.base`, their shared ``VectorTransform``.

May import: :mod:`paramshape.transforms.base`, :mod:`paramshape.transforms.registry`,
:mod:`paramshape.transforms.sets` and the layers below them.
"""
