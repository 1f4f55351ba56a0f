"""How a constraint is kept: reparametrise, project after the step, penalise, step on the manifold, or
drive the tensor into the set with Lagrange multipliers.

Modules: :mod:`~.methods` (``ConstraintMethod``, ``ConstraintInfo``, ``penalty``, ``project_``),
:mod:`~.state` (the per-module state: which tensors are projected or penalised, the optimizer step
hook that projects, gradient clipping settings), :mod:`~.riemannian` (the step hooks of
``method="riemannian"``), :mod:`~.lagrangian` (the multipliers of ``method="lagrangian"``, their
dual step and their ``state_dict`` entries), :mod:`~.saturation` (``saturation``, where a
reparametrised tensor's map is flat, and the optimizer hook behind ``SaturationWarning``),
:mod:`~.folded` (``constrain(..., fold=True)``) and :mod:`~.dispatch` (the one global optimizer
step pre-hook and post-hook that run the others' step work, for the optimizers that concern them).

May import: :mod:`paramshape.lookup`, :mod:`paramshape.transforms` and the layers below.
"""
