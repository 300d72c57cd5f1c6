"""Independent float64 reference values for the SIGReg tests (tests/fixtures/sigreg_reference.json).

Written without the official code's tricks so that agreement means something:
- Epps-Pulley from the complex empirical characteristic function on the FULL grid [-t_max, t_max]
  (2*knots-1 nodes) with numpy's trapezoid rule, not the half-grid cos/sin sums;
- Anderson-Darling, Cramer-von Mises and Watson from sorted samples with math.erf in plain Python loops;
- extended Jarque-Bera and VCReg from the moment definitions with the statistics module.
Run once: .venv/bin/python scripts/reference/sigreg_fixture.py > tests/fixtures/sigreg_reference.json
"""
import json, math, statistics
import numpy as np

rng = np.random.default_rng(20251114)
N, K, M = 64, 5, 7
T_MAX, KNOTS = 3.0, 17

# A batch that is far enough from N(0,1) in different ways per dimension.
z = np.stack([rng.normal(0, 1, N), rng.normal(0.5, 1, N), rng.uniform(-2, 2, N),
              rng.exponential(1, N) - 1, rng.normal(0, 2, N)], axis=1)
a = rng.normal(size=(K, M))
a /= np.linalg.norm(a, axis=0, keepdims=True)
x = z @ a  # [N, M]

def epps_pulley(col):
    t = np.linspace(-T_MAX, T_MAX, 2 * KNOTS - 1)
    ecf = np.exp(1j * np.outer(col, t)).mean(axis=0)
    integrand = np.abs(ecf - np.exp(-t**2 / 2))**2 * np.exp(-t**2 / 2)
    trapz = getattr(np, "trapezoid", None) or np.trapz
    return len(col) * trapz(integrand, t)

def cdf(v):
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))

def anderson_darling(col):
    s = sorted(col); n = len(s)
    total = sum((2 * k - 1) * (math.log(cdf(s[k - 1])) + math.log(1 - cdf(s[n - k]))) for k in range(1, n + 1))
    return -n - total / n

def cramer_von_mises(col):
    s = sorted(col); n = len(s)
    return sum(((2 * k - 1) / (2 * n) - cdf(s[k - 1]))**2 for k in range(1, n + 1)) / n

def watson(col):
    return cramer_von_mises(col) - (sum(cdf(v) for v in col) / len(col) - 0.5)**2

def vcreg(col):
    n = len(col); mean = statistics.fmean(col); var = statistics.variance(col)
    return n * mean**2 / var + (n - 1) * (var - 1)**2 / 2

def extended_jarque_bera(col):
    n = len(col); mean = statistics.fmean(col); sd = math.sqrt(statistics.variance(col))
    skew = sum(((v - mean) / sd)**3 for v in col) / n
    kurt = sum(((v - mean) / sd)**4 for v in col) / n
    return vcreg(col) + n / 6 * (skew**2 + (kurt - 3)**2 / 4)

cols = [list(map(float, x[:, j])) for j in range(M)]
out = {
    "t_max": T_MAX, "knots": KNOTS,
    "z": z.tolist(), "directions": a.tolist(),
    "epps-pulley": [epps_pulley(np.array(c)) for c in cols],
    "anderson-darling": [anderson_darling(c) for c in cols],
    "cramer-von-mises": [cramer_von_mises(c) for c in cols],
    "watson": [watson(c) for c in cols],
    "extended-jarque-bera": [extended_jarque_bera(c) for c in cols],
    "vcreg": [vcreg(c) for c in cols],
}
print(json.dumps(out))
