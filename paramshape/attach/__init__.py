"""Attaching and removing constraints: ``constrain``, ``unconstrain``, ``constraints``.

Modules: :mod:`~.constrain` (the public functions), :mod:`~.planning` (every check and computation
for one tensor, before anything changes), :mod:`~.applying` (carrying out the plans, all or nothing; :mod:`~.registration` builds each
parametrization as torch's ``register_parametrization`` does, without its generic work)
and :mod:`~.checkpoint` (``load_state_dict`` support and ``plain_state_dict``).

May import: :mod:`paramshape.strategies`, :mod:`paramshape.lookup`, :mod:`paramshape.spec` and the
layers below.
"""
