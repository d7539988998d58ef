"""The inverse of a 3x3 matrix exactly as ITK computes an image's physical-point-to-index matrix.

``itk::ImageBase`` inverts ``direction @ diag(spacing)`` with ``vnl_matrix_inverse``, which is an SVD
(LINPACK ``dsvdc`` as shipped in VXL's ``v3p_netlib``, job 21) followed by the pseudo-inverse ``V W^-1 U^T``.
That inverse is not the correctly rounded one: for permuted axes it often carries 1e-16 cross terms and
last-bit differences on the non-zero entries (measured against SimpleITK 2.5.7 on random signed permutations:
about 1 matrix in 9 differs from ``diag(1/s) P^T``; oblique matrices never equal ``numpy.linalg.inv`` bit for bit).
Those bits decide which neighbour a nearest-neighbour resampling picks when a voxel centre sits exactly halfway
between two source voxels, so this module re-does the same floating-point operations in the same order on Python
floats (IEEE double, no fused multiply-add, as the x86-64 SimpleITK wheels). Written from the algorithm's
description (Dongarra et al., LINPACK Users' Guide, ch. 11) and the operation order of the netlib BLAS level-1
routines it calls; nothing here is needed except :func:`itk_inverse_3x3`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Matrix = list[list[float]]


def _sign(magnitude: float, sign_of: float) -> float:
    """Fortran ``DSIGN`` as f2c implements it: ``|magnitude|`` with the sign of ``sign_of`` (``-0.0`` counts as +)."""
    value = magnitude if magnitude >= 0 else -magnitude
    return value if sign_of >= 0 else -value


def _norm2(values: list[float]) -> float:
    """BLAS ``dnrm2`` (the scaled sum-of-squares loop of the reference implementation)."""
    if len(values) < 1:
        return 0.0
    if len(values) == 1:
        return abs(values[0])
    scale, ssq = 0.0, 1.0
    for value in values:
        if value != 0.0:
            magnitude = abs(value)
            if scale < magnitude:
                ratio = scale / magnitude
                ssq = ssq * (ratio * ratio) + 1.0
                scale = magnitude
            else:
                ratio = magnitude / scale
                ssq += ratio * ratio
    return scale * math.sqrt(ssq)


def _dot(xs: list[float], ys: list[float]) -> float:
    """BLAS ``ddot``: a left-to-right sum starting from 0."""
    total = 0.0
    for x, y in zip(xs, ys):
        total += x * y
    return total


def _givens(a: float, b: float) -> tuple[float, float, float, float]:
    """BLAS ``drotg``: returns ``(r, z, c, s)`` (``r`` and ``z`` overwrite ``a`` and ``b`` in the Fortran)."""
    roe = a if abs(a) > abs(b) else b
    scale = abs(a) + abs(b)
    if scale == 0.0:
        return 0.0, 0.0, 1.0, 0.0
    ra, rb = a / scale, b / scale
    r = scale * math.sqrt(ra * ra + rb * rb)
    r = _sign(1.0, roe) * r
    c, s = a / r, b / r
    z = 1.0
    if abs(a) > abs(b):
        z = s
    if abs(b) >= abs(a) and c != 0.0:
        z = 1.0 / c
    return r, z, c, s


def _rotate(x: list[float], y: list[float], c: float, s: float) -> None:
    """BLAS ``drot`` in place on two columns."""
    for i in range(len(x)):
        rotated = c * x[i] + s * y[i]
        y[i] = c * y[i] - s * x[i]
        x[i] = rotated


def _axpy(alpha: float, x: Sequence[float], y: list[float], start: int) -> None:
    """BLAS ``daxpy`` on ``y[start:]`` (returns early for ``alpha == 0``, keeping signed zeros as they are)."""
    if alpha == 0.0:
        return
    for i in range(start, len(y)):
        y[i] += alpha * x[i]


def _svd(matrix: Matrix) -> tuple[list[float], Matrix, Matrix]:
    """LINPACK ``dsvdc`` with job 21 on a square ``n x n`` matrix: ``(s, u, v)`` with ``u``/``v`` as lists of columns.

    Singular values come back sorted and non-negative. Indices are 0-based here; the comments name the
    Fortran labels of the steps.
    """
    n = len(matrix)
    x = [[float(matrix[i][j]) for i in range(n)] for j in range(n)]  # x[column][row]
    s = [0.0] * n
    e = [0.0] * n
    u = [[0.0] * n for _ in range(n)]
    v = [[0.0] * n for _ in range(n)]
    work = [0.0] * n
    nct = n - 1  # columns reduced by Householder transformations
    nrt = max(0, n - 2)  # rows reduced
    # Reduce to bidiagonal form (labels 10..160).
    for l in range(max(nct, nrt)):
        if l < nct:
            column = x[l]
            s[l] = _norm2(column[l:])
            if s[l] != 0.0:
                if column[l] != 0.0:
                    s[l] = _sign(s[l], column[l])
                factor = 1.0 / s[l]
                for i in range(l, n):
                    column[i] = factor * column[i]
                column[l] = 1.0 + column[l]
            s[l] = -s[l]
        for j in range(l + 1, n):
            if l < nct and s[l] != 0.0:
                t = -_dot(x[l][l:], x[j][l:]) / x[l][l]
                _axpy(t, x[l], x[j], l)
            e[j] = x[j][l]
        if l < nct:
            for i in range(l, n):
                u[l][i] = x[l][i]
        if l < nrt:
            e[l] = _norm2(e[l + 1 :])
            if e[l] != 0.0:
                if e[l + 1] != 0.0:
                    e[l] = _sign(e[l], e[l + 1])
                factor = 1.0 / e[l]
                for i in range(l + 1, n):
                    e[i] = factor * e[i]
                e[l + 1] = 1.0 + e[l + 1]
            e[l] = -e[l]
            if l + 1 < n and e[l] != 0.0:
                for i in range(l + 1, n):
                    work[i] = 0.0
                for j in range(l + 1, n):
                    _axpy(e[j], x[j], work, l + 1)
                for j in range(l + 1, n):
                    _axpy(-e[j] / e[l + 1], work, x[j], l + 1)
            for i in range(l + 1, n):
                v[l][i] = e[i]
    # The final bidiagonal elements (label 170).
    m = n
    s[nct] = x[nct][nct]
    if nrt + 1 < m:
        e[nrt] = x[m - 1][nrt]
    e[m - 1] = 0.0
    # Generate U (labels 180..290).
    for j in range(nct, n):
        u[j] = [0.0] * n
        u[j][j] = 1.0
    for l in reversed(range(nct)):
        if s[l] != 0.0:
            for j in range(l + 1, n):
                t = -_dot(u[l][l:], u[j][l:]) / u[l][l]
                _axpy(t, u[l], u[j], l)
            for i in range(l, n):
                u[l][i] = -1.0 * u[l][i]
            u[l][l] = 1.0 + u[l][l]
            for i in range(l):
                u[l][i] = 0.0
        else:
            u[l] = [0.0] * n
            u[l][l] = 1.0
    # Generate V (labels 300..340).
    for l in reversed(range(n)):
        if l < nrt and e[l] != 0.0:
            for j in range(l + 1, n):
                t = -_dot(v[l][l + 1 :], v[j][l + 1 :]) / v[l][l + 1]
                _axpy(t, v[l], v[j], l + 1)
        v[l] = [0.0] * n
        v[l][l] = 1.0
    # Main iteration (labels 360..610); m counts the singular values not yet converged (1-based as in Fortran).
    mm = m
    iterations = 0
    while m != 0:
        if iterations >= 1000:
            raise ArithmeticError("the SVD did not converge (as vnl_svd would report)")
        # 1-based l in [0, m-1]: find a negligible e(l).
        l = m - 1
        while l > 0:
            test = abs(s[l - 1]) + abs(s[l])
            if test + abs(e[l - 1]) == test:
                e[l - 1] = 0.0
                break
            l -= 1
        if l == m - 1:
            kase = 4
        else:
            ls = m
            while ls != l:
                test = 0.0
                if ls != m:
                    test += abs(e[ls - 1])
                if ls != l + 1:
                    test += abs(e[ls - 2])
                if test + abs(s[ls - 1]) == test:
                    s[ls - 1] = 0.0
                    break
                ls -= 1
            if ls == l:
                kase = 3
            elif ls == m:
                kase = 1
            else:
                kase = 2
                l = ls
        l += 1  # 1-based index of the first element of the block
        if kase == 1:  # deflate a negligible s(m)
            f = e[m - 2]
            e[m - 2] = 0.0
            for k in range(m - 1, l - 1, -1):
                s[k - 1], f, c, sn = _givens(s[k - 1], f)
                if k != l:
                    f = -sn * e[k - 2]
                    e[k - 2] = c * e[k - 2]
                _rotate(v[k - 1], v[m - 1], c, sn)
        elif kase == 2:  # split at a negligible s(l)
            f = e[l - 2]
            e[l - 2] = 0.0
            for k in range(l, m + 1):
                s[k - 1], f, c, sn = _givens(s[k - 1], f)
                f = -sn * e[k - 1]
                e[k - 1] = c * e[k - 1]
                _rotate(u[k - 1], u[l - 2], c, sn)
        elif kase == 3:  # one QR step with a shift
            scale = max(abs(s[m - 1]), abs(s[m - 2]), abs(e[m - 2]), abs(s[l - 1]), abs(e[l - 1]))
            sm, smm1, emm1 = s[m - 1] / scale, s[m - 2] / scale, e[m - 2] / scale
            sl, el = s[l - 1] / scale, e[l - 1] / scale
            b = ((smm1 + sm) * (smm1 - sm) + emm1 * emm1) / 2.0
            product = sm * emm1
            c = product * product
            shift = 0.0
            if not (b == 0.0 and c == 0.0):
                shift = math.sqrt(b * b + c)
                if b < 0.0:
                    shift = -shift
                shift = c / (b + shift)
            f = (sl + sm) * (sl - sm) + shift
            g = sl * el
            for k in range(l, m):
                f, g, cs, sn = _givens(f, g)
                if k != l:
                    e[k - 2] = f
                f = cs * s[k - 1] + sn * e[k - 1]
                e[k - 1] = cs * e[k - 1] - sn * s[k - 1]
                g = sn * s[k]
                s[k] = cs * s[k]
                _rotate(v[k - 1], v[k], cs, sn)
                f, g, cs, sn = _givens(f, g)
                s[k - 1] = f
                f = cs * e[k - 1] + sn * s[k]
                s[k] = -sn * e[k - 1] + cs * s[k]
                g = sn * e[k]
                e[k] = cs * e[k]
                if k < n:
                    _rotate(u[k - 1], u[k], cs, sn)
            e[m - 2] = f
            iterations += 1
        else:  # convergence: make s(l) positive, then sort
            if s[l - 1] < 0.0:
                s[l - 1] = -s[l - 1]
                v[l - 1] = [-1.0 * value for value in v[l - 1]]
            while l != mm and s[l - 1] < s[l]:
                s[l - 1], s[l] = s[l], s[l - 1]
                if l < n:
                    v[l - 1], v[l] = v[l], v[l - 1]
                    u[l - 1], u[l] = u[l], u[l - 1]
                l += 1
            iterations = 0
            m -= 1
    return s, u, v


def _matmul(a: Matrix, b: Matrix) -> Matrix:
    """``vnl_matrix`` product: each entry a left-to-right sum starting from 0."""
    size, inner, cols = len(a), len(b), len(b[0])
    out = [[0.0] * cols for _ in range(size)]
    for i in range(size):
        for k in range(cols):
            total = 0.0
            for j in range(inner):
                total += a[i][j] * b[j][k]
            out[i][k] = total
    return out


def itk_inverse_3x3(matrix: Sequence[Sequence[float]]) -> Matrix:
    """``itk::Matrix::GetInverse`` (``vnl_matrix_inverse``: SVD pseudo-inverse ``V W^-1 U^T``), bit for bit.

    ``matrix`` is row-major (``matrix[row][col]``); so is the result.
    """
    size = len(matrix)
    singular, u_columns, v_columns = _svd([[float(value) for value in row] for row in matrix])
    weights = [abs(value) for value in singular]
    w_inverse = [[0.0] * size for _ in range(size)]
    for k in range(size):
        w_inverse[k][k] = 1.0 / weights[k] if abs(weights[k]) > 0.0 else 0.0
    v_rows = [[v_columns[j][i] for j in range(size)] for i in range(size)]
    u_transposed = [list(column) for column in u_columns]  # row j of U^T is column j of U
    return _matmul(_matmul(v_rows, w_inverse), u_transposed)
