"""The straightforward NumPy way a researcher writes it (the paper's public code does the same).

* SGD: per run, draw the n x d data with ``multivariate_normal`` from the dense K, loop over the
  steps in Python, compute the risk with the dense K every 20 steps.
* ODE: forward Euler with dt = 0.05, reduction factors from fixed Simpson grids: the density of
  w = z - eps by Simpson over eps on 100 points of [-30 scale, 30 scale], then mu and nu by Simpson
  over w on 200 points of [-c, c].
* Max-CCC schedule: the same Euler loop with a scalar optimiser for c inside every step.

Nothing here is used by the package; it is the yardstick of benchmarks/run.py.
"""

from __future__ import annotations

import numpy as np
from scipy import integrate, optimize, stats


def sgd_numpy(K, x0, x_star, noise_sampler, lr, clip, T, runs, seed=0, record_every=20):
    d = K.shape[0]
    D = np.trace(K)
    n = int(round(T * D))
    rng = np.random.default_rng(seed)
    thr = np.inf if clip is None else clip * np.sqrt(D)
    risks = []
    for _ in range(runs):
        A = rng.multivariate_normal(np.zeros(d), K, size=n)
        eps = noise_sampler(rng, n)
        b = A @ x_star + eps
        x = x0.copy()
        path = []
        for k in range(n):
            if k % record_every == 0:
                e = x - x_star
                path.append(0.5 * e @ K @ e)
            g = (A[k] @ x - b[k]) * A[k]
            norm = np.linalg.norm(g)
            if norm > thr:
                g = g * (thr / norm)
            x = x - (lr / D) * g
        risks.append(path)
    return np.array(risks)


def factors_simpson(noise_pdf, scale, R, c):
    """mu, nu from fixed grids (what breaks at small R: the Gaussian of width s falls between
    the eps-grid points)."""
    s = np.sqrt(2 * R)
    e = np.linspace(-30 * scale, 30 * scale, 100)
    w = np.linspace(-c, c, 200)
    # density of w = z - eps at each w: int phi_s(w + e) p(e) de
    f_w = integrate.simpson(
        stats.norm.pdf(w[:, None] + e[None, :], scale=s) * noise_pdf(e)[None, :], x=e, axis=1
    )
    mu = integrate.simpson(f_w, x=w)
    nu = integrate.simpson(w * w * f_w, x=w) + c * c * (1 - mu)
    return mu, nu


def _euler(eigenvalues, e0, T, dt, coefficients):
    """Forward Euler on dv/dt = -2 g mu lam v + g^2 lam nu / (2D), (g, mu, nu) = coefficients(R)."""
    lam = eigenvalues
    D = lam.sum()
    v = 0.5 * e0**2
    n = int(round(T / dt))
    out = [lam @ v]
    for _ in range(n):
        g, mu, nu = coefficients(lam @ v)
        v = v + dt * (-2 * g * mu * lam * v + g**2 * lam * nu / (2 * D))
        out.append(lam @ v)
    return np.arange(n + 1) * dt, np.array(out)


def ode_euler(eigenvalues, e0, noise_pdf, scale, lr, clip, T, dt=0.05):
    return _euler(
        eigenvalues, e0, T, dt, lambda R: (lr, *factors_simpson(noise_pdf, scale, R, clip))
    )


def ode_euler_max_ccc(eigenvalues, e0, noise_pdf, scale, lr, T, dt=0.05):
    """Max-CCC schedule the naive way: an optimiser over c inside every Euler step."""

    def coefficients(R):
        def neg(log_c):
            mu, nu = factors_simpson(noise_pdf, scale, R, np.exp(log_c))
            return -mu * mu / nu

        c = np.exp(optimize.minimize_scalar(neg, bounds=(-5, 5), method="bounded").x)
        mu, nu = factors_simpson(noise_pdf, scale, R, c)
        return lr / mu, mu, nu

    return _euler(eigenvalues, e0, T, dt, coefficients)
