"""Bounded outputs: ``bound_output`` (:mod:`~.bound`) and the output layers ``HardClamp``,
``BoundedReLU`` and ``TemperatureSoftmax`` (:mod:`~.layers`).

May import: :mod:`paramshape.attach` and the layers below.
"""
