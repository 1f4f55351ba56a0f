"""How a constraint is kept: reparametrise, project after the step, or penalise.

Modules: :mod:`~.methods` (``ConstraintMethod``, ``ConstraintInfo``, ``penalty``, ``project_``),
:mod:`~.state` (the per-module state: which tensors are projected or penalised, the optimizer step
hook that projects, gradient clipping settings) and :mod:`~.saturation` (``saturation``, where a
reparametrised tensor's map is flat, and the optimizer hook behind ``SaturationWarning``).

May import: :mod:`paramshape.lookup`, :mod:`paramshape.transforms` and the layers below.
"""
