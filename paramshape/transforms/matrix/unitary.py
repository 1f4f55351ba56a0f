"""Unitary matrices and complex matrices with orthonormal columns (or rows): :class:`Unitary`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from paramshape.transforms.matrix.base import MatrixSet
from paramshape.transforms.matrix.orthogonal import Orthogonal, _orthogonal_excess, polar_projection
from paramshape.transforms.registry import register

__all__ = ["Unitary", "unitary"]


@register("unitary")
class Unitary(Orthogonal):
    r"""Unitary matrices, and complex rectangular ones with orthonormal columns (tall) or rows
    (wide): the complex Stiefel manifold. For unitary recurrences (uRNN), quantum-circuit layers and
    complex-valued isometries (geotorch issue #35).

    :class:`Orthogonal` with the conjugate transpose in place of the transpose, on ``complex64`` and
    ``complex128`` tensors:

    .. math::

        f(X) = B\, \phi\bigl(\operatorname{skewh}(X)\bigr), \quad
        \operatorname{skewh}(X) = \tfrac12 (X - X^{H}), \quad
        \phi(A) = e^{A} \ \text{or}\ (I - A)^{-1} (I + A), \qquad
        f^{-1}(U) = 0 \text{ with } B := U

    The exponential (or Cayley transform) of a skew-Hermitian matrix is unitary; the base :math:`B`
    (a buffer, in ``state_dict``) is the value last assigned, so ``init="keep"`` keeps a unitary
    value to the last bit. ``method`` takes the same values as :class:`Orthogonal`'s: ``"thin"``
    (the default for matrices 4 times longer than wide) never forms an ``n x n`` matrix. Gradients
    follow torch's complex autograd convention (the conjugate Wirtinger derivative of a real loss),
    so the stock optimizers train the stored complex tensor.

    **Not bijective** (no log-det-Jacobian), like :class:`Orthogonal`.

    * Domain: :math:`\mathbb{C}^{n \times k}`, on the last two dimensions; leading ones are a batch.
    * Codomain: :math:`\{U : U^{H} U = I\}` (:math:`U U^{H} = I` if wide), :data:`unitary`.
      Membership per matrix: :math:`\lVert U^{H} U - I \rVert_2` at most ``matrix_tolerance`` of the
      longer side, with the epsilon of the real dtype (float32 for ``complex64``).
    * Projection (``method="project"``): the polar factor :math:`P V^{H}` of the thin SVD
      :math:`Y = P S V^{H}`, the nearest such matrix in the Frobenius norm.
    * ``sample``: Haar-distributed, the Q of a complex Gaussian's QR with its phases fixed by
      :math:`\operatorname{diag}(R) / \lvert\operatorname{diag}(R)\rvert` (Mezzadri 2007).

    Real tensors are refused (:class:`~paramshape.UnsupportedTensorError`): use :class:`Orthogonal`.

    Args:
        method: as :class:`Orthogonal`: ``"auto"``, ``"matrix_exp"``, ``"cayley"`` or ``"thin"``.

    Example:
        >>> import torch, torch.nn as nn, paramshape as ps
        >>> layer = nn.Linear(3, 3, bias=False, dtype=torch.complex64)
        >>> _ = ps.constrain(layer, "weight", ps.Unitary(), init="sample")
        >>> w = layer.weight.detach()
        >>> torch.allclose(w.mH @ w, torch.eye(3, dtype=torch.complex64), atol=1e-5)
        True
        >>> try:
        ...     ps.constrain(nn.Linear(3, 3), "weight", ps.Unitary())
        ... except ps.UnsupportedTensorError as error:
        ...     print(error)
        'weight' of Linear has dtype torch.float32; Unitary() is a set of complex tensors. Constrain a complex64 or complex128 tensor, or ps.Orthogonal() for a real one.
    """

    supports_complex = True
    complex_only = True
    # The Riemannian steps are written for real tensors (their inner products); refused, not wrong.
    manifold = False

    def _real_counterpart(self) -> str:
        return ", or ps.Orthogonal() for a real one"

    @property
    def codomain(self) -> constraints.Constraint:
        return unitary

    def project(self, y: Tensor) -> Tensor:
        r"""The polar factor :math:`P V^{H}` of the thin SVD :math:`Y = P S V^{H}` (rows if wide): the
        nearest matrix with orthonormal columns in the Frobenius norm. A matrix holding NaN or
        infinity stays NaN."""
        return polar_projection(y)

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A Haar-distributed value: the Q factor of a complex standard normal matrix's QR, each
        column multiplied by the phase of R's diagonal entry (without it Q is not Haar). ``dtype``
        defaults to the complex dtype of the default dtype (``complex64`` for ``float32``)."""
        if dtype is None:
            dtype = torch.complex128 if torch.get_default_dtype() == torch.float64 else torch.complex64
        shape = torch.Size(shape)
        rows, cols = max(shape[-2], shape[-1]), min(shape[-2], shape[-1])
        wide = torch.complex128  # drawn and factored in double precision, rounded once
        noise = torch.randn((*shape[:-2], rows, cols), dtype=wide, device=device, generator=generator)
        q, r = torch.linalg.qr(noise)
        diagonal = r.diagonal(dim1=-2, dim2=-1)
        phases = torch.where(diagonal.abs() > 0, diagonal / diagonal.abs(), 1.0)
        value = q * phases[..., None, :]
        result: Tensor = (value.mH if shape[-2] < shape[-1] else value).to(dtype).contiguous()
        return result


#: Complex matrices with orthonormal columns (rows, if wide), as a
#: :class:`torch.distributions.constraints.Constraint` (event_dim 2) with :class:`Unitary`'s
#: tolerance: ``unitary.check(value)`` is one boolean per matrix.
unitary = MatrixSet("Unitary()", _orthogonal_excess)
