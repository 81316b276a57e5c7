"""Weighted least squares on the network of overlapping groups, with covariances.

Every used pair ``k`` of groups ``(a, b)`` says ``p[a] - p[b] = delta[k]`` for
a vector of ``dim`` coefficients per group (1 for a constant sky, 3 for a
plane), with a ``dim x dim`` covariance ``cov[k]``. `Network` assembles the
weighted normal equations (a block graph Laplacian), fixes one group per
connected set (the equations determine only differences), and gives:

- `Network.solve`: the minimum-norm solution (each set's coefficients sum
  to zero, as a pseudo-inverse would give);
- `Network.chi2`: the sum of squared normalized residuals;
- `Network.level_variances`: the variance of a linear combination of each
  group's coefficients (its mean level over its images), relative to the
  mean of its set, from the inverse of the normal matrix.

Used for the plane fit and for the uncertainties of both sky models; the
constant sky's offsets themselves come from `skymatch_step._solver`, which
handles bridges and extreme weights exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

__all__ = ["Network"]

#: Right-hand sides solved at once when computing variances.
_BATCH = 256


class Network:
    """The normal equations of pair measurements between groups.

    Parameters
    ----------
    ngroups : int
    a, b : array_like of int
        The groups of every used pair.
    delta : ndarray
        ``(m, dim)`` measured ``p[a] - p[b]``.
    cov : ndarray
        ``(m, dim, dim)`` covariance of each ``delta`` (positive definite).
    prior : array_like, optional
        ``(dim,)`` precision (1 / variance) of a zero-mean prior on each
        coefficient of every group; 0 for none. A coefficient with a prior
        is determined absolutely; the others only up to a common value per
        connected set, which the solution sets to a zero mean.
    """

    def __init__(self, ngroups, a, b, delta, cov, prior=None):
        self.n = int(ngroups)
        self.a = np.asarray(a, dtype=np.intp)
        self.b = np.asarray(b, dtype=np.intp)
        self.delta = np.asarray(delta, dtype=float).reshape(len(self.a), -1)
        self.dim = self.delta.shape[1]
        cov = np.asarray(cov, dtype=float).reshape(len(self.a), self.dim, self.dim)
        self.weight = np.linalg.inv(cov)
        self.prior = np.zeros(self.dim) if prior is None else np.asarray(prior, float)
        self.gauge = self.prior == 0
        linked = np.zeros(self.n, dtype=bool)
        linked[self.a] = linked[self.b] = True
        self.linked = linked
        graph = coo_matrix((np.ones(len(self.a)), (self.a, self.b)), shape=(self.n, self.n)).tocsr()
        _, self.sets = connected_components(graph, directed=False)
        self._factor()

    def _factor(self):
        """Factor the normal matrix, the gauge coefficients of one group per set held fixed."""
        n, d = self.n, self.dim
        first = np.zeros(n, dtype=bool)
        _, index = np.unique(self.sets, return_index=True)
        first[index] = True
        # Unknown (group, coefficient) pairs: linked groups, minus the gauge
        # coefficients of each set's first group.
        free = np.repeat(self.linked, d).reshape(n, d)
        free[first[:, None] & self.gauge[None, :]] = False
        col = np.full((n, d), -1, dtype=np.intp)
        col[free] = np.arange(int(free.sum()))
        self._col = col
        self._size = int(free.sum())
        self._lu = None
        if not self._size:
            return
        rows, cols, vals = [], [], []
        for p, q, w in (
            (self.a, self.a, self.weight),
            (self.b, self.b, self.weight),
            (self.a, self.b, -self.weight),
            (self.b, self.a, -self.weight),
        ):
            for i in range(d):
                for j in range(d):
                    cp, cq = col[p, i], col[q, j]
                    keep = (cp >= 0) & (cq >= 0)
                    rows.append(cp[keep])
                    cols.append(cq[keep])
                    vals.append(w[keep, i, j])
        for i in range(d):
            if self.prior[i] > 0:
                ci = col[:, i][col[:, i] >= 0]
                rows.append(ci)
                cols.append(ci)
                vals.append(np.full(ci.size, self.prior[i]))
        matrix = coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self._size, self._size),
        ).tocsc()
        self._lu = splu(matrix, permc_spec="MMD_AT_PLUS_A")

    def _rhs(self, values):
        """Normal-equation right-hand side of pair vectors ``values`` (m, dim)."""
        d = self.dim
        wv = np.einsum("kij,kj->ki", self.weight, values)
        out = np.zeros((self.n, d))
        np.add.at(out, self.a, wv)
        np.subtract.at(out, self.b, wv)
        return out

    def _solve_free(self, rhs):
        """Solve with the fixed coefficients at zero; ``rhs`` is (n, dim, ...) by group."""
        x = np.zeros(rhs.shape)
        if self._lu is None:
            return x
        free = self._col >= 0
        order = np.argsort(self._col[free])
        packed = rhs[free][order]
        sol = self._lu.solve(packed.reshape(self._size, -1)).reshape(packed.shape)
        where = np.argwhere(free)[order]
        x[where[:, 0], where[:, 1]] = sol
        return x

    def solve_normal(self, rhs):
        """Apply the inverse of the normal matrix to ``rhs`` (``(n, dim, ...)``, by group).

        The set's fixed coefficients are held at zero (their rows of the
        result are zero): combinations that sum to zero over a set, such as
        a level relative to the set's mean, are unaffected by that choice.
        """
        return self._solve_free(np.asarray(rhs, dtype=float))

    def solve(self):
        """Minimum-norm coefficients of every group.

        Returns
        -------
        ndarray
            ``(n, dim)``; NaN for groups in no pair.
        """
        x = self._solve_free(self._rhs(self.delta))
        out = np.full((self.n, self.dim), np.nan)
        for label in np.unique(self.sets[self.linked]):
            members = self.linked & (self.sets == label)
            shift = np.where(self.gauge, x[members].mean(axis=0), 0.0)
            out[members] = x[members] - shift
        return out

    def residuals(self, p):
        """``delta - (p[a] - p[b])`` of every pair."""
        return self.delta - (p[self.a] - p[self.b])

    def chi2(self, p):
        """Squared normalized residual of every pair (Mahalanobis)."""
        r = self.residuals(p)
        return np.einsum("ki,kij,kj->k", r, self.weight, r)

    def redundancy(self):
        """Independent equations beyond the unknowns (without a prior's)."""
        return self.dim * len(self.a) - self._size

    def level_variances(self, e, relative=None):
        """Variance of ``e[g] . p[g]`` relative to its set's mean, for every group.

        Parameters
        ----------
        e : ndarray
            ``(n, dim)``: the combination of each group's coefficients (for a
            plane, its mean level over its images: ``(1, xi, eta)``).
        relative : ndarray of bool, optional
            ``(dim,)``: the coefficients taken relative to their set's mean
            (default: those without a prior). Including a coefficient with a
            prior leaves out what only the prior determines (a common slope).

        Returns
        -------
        ndarray
            ``(n,)``; NaN for groups in no pair.
        """
        out = np.full(self.n, np.nan)
        if not self.linked.any():
            return out
        for label in np.unique(self.sets[self.linked]):
            members = np.flatnonzero(self.linked & (self.sets == label))
            out[members] = self._set_variances(members, e[members], relative)
        return out

    def _set_variances(self, members, e, relative=None):
        """Level variances of the groups of one connected set."""
        n, d = self.n, self.dim
        relative = self.gauge if relative is None else np.asarray(relative, dtype=bool)
        size = members.size
        # w_g = u_g - mean over the set of u_h, with u_g = e_g on block g.
        # Var_g = w_g' G w_g, G the inverse of the normal matrix with the
        # set's fixed group held at zero (its rows of G are zero).
        ones = np.zeros((n, d, d))
        ones[members] = np.diag(relative.astype(float))
        y = self._solve_free(ones)  # G (1 x I): (n, d, d)
        ysum = y[members].sum(axis=0)  # (1 x I)' G (1 x I): (d, d)
        out = np.empty(size)
        for start in range(0, size, _BATCH):
            batch = members[start : start + _BATCH]
            rhs = np.zeros((n, d, batch.size))
            rhs[batch, :, np.arange(batch.size)] = e[start : start + batch.size]
            gu = self._solve_free(rhs)  # G u_g, one column per group
            own = e[start : start + batch.size]
            uu = np.einsum("kd,kd->k", own, gu[batch, :, np.arange(batch.size)])
            # y = G (1 x D), D the gauge coefficients: u'G(1 x D)e and
            # (1 x De)'G(1 x De) = (De)' (sum of y over the set) e.
            uy = np.einsum("kd,kdj,kj->k", own, y[batch], own)
            yy = np.einsum("kd,dj,kj->k", own * relative, ysum, own)
            out[start : start + batch.size] = uu - 2.0 * uy / size + yy / size**2
        return np.maximum(out, 0.0)
