"""Training helpers: ``clip_grad`` (:mod:`~.grad`), ``init_`` (:mod:`~.init`), ``param_groups``
(:mod:`~.optim`) and ``functional_params`` (:mod:`~.functional`).

May import: :mod:`paramshape.strategies`, :mod:`paramshape.lookup` and the layers below (not
:mod:`paramshape.attach`).
"""
