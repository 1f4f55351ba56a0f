"""Specs: what ``constrain`` accepts as "the set", and their resolution into a transform.

Modules: :mod:`~.parse` (spec strings parsed with ``ast``, literals only), :mod:`~.resolve`
(``resolve``, ``Spec`` and the public ``register``, which also takes a pair of functions) and
:mod:`~.compose` (``Compose``, a transform built from specs).

May import: :mod:`paramshape.interop`, :mod:`paramshape.transforms` and the layers below.
"""
