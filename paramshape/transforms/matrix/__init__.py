"""Matrix transforms: each matrix in the last two dims in its set (``Symmetric``, ``LowerCholesky``,
``PositiveDefinite``, ``CorrCholesky``, ``CorrMatrix``, ``Orthogonal``, and
on complex tensors ``Unitary`` and ``Hermitian``), and :mod:`~.base`, their
shared ``MatrixTransform`` with the matrix numerics (jitter, tolerances, symmetrisation).

May import: :mod:`paramshape.transforms.base`, :mod:`paramshape.transforms.registry`,
:mod:`paramshape.transforms.sets` and the layers below them.
"""
