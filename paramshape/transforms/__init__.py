"""The transforms: the :class:`~paramshape.Transform` base, the registry table and the families.

Layout:

* :mod:`~paramshape.transforms.base`: ``Transform``, the contract every transform follows.
* :mod:`~paramshape.transforms.registry`: the table of named transforms the families enrol in.
* :mod:`~paramshape.transforms.sets`: the ``torch.distributions`` constraint objects used as
  domains and codomains, with paramshape's membership tolerances.
* :mod:`~paramshape.transforms.elementwise`: a condition on each value (``Box``, ``Positive``, ...).
* :mod:`~paramshape.transforms.vector`: a condition on each slice along ``dim`` (``Simplex``, ...).
* :mod:`~paramshape.transforms.matrix`: a condition on each matrix (``Orthogonal``, ...).

May import: torch, :mod:`paramshape.errors`, :mod:`paramshape.numerics`, :mod:`paramshape.fusion`.
Nothing here knows about modules, constraints attached to them, spec strings or strategies.
"""
