"""Elementary functions and random draws whose results do not depend on the CPU.

numpy dispatches ``exp``, ``log``, ``sin``, ``cos`` and ``power`` to SIMD kernels chosen at run
time (AVX2, AVX-512, NEON), glibc's ``libm`` picks FMA or plain variants of the same functions,
and numpy's Gaussian sampler calls ``libm``'s ``log1p`` in its tail: each can round the last bit
differently on another processor, and one bit upstream of a rounding to uint8 is enough to change
a file of the synthetic data set (14 of 2,002 files changed under an emulated older CPU).

Everything here is built from IEEE 754 basic operations only (``+ - * /``, ``sqrt``, ``rint``,
``frexp``, ``ldexp``, comparisons), each one a separate numpy ufunc call or Python float
operation, so it is correctly rounded at every step and cannot be fused into an FMA by a
compiler: the same inputs give the same bits on any CPU and SIMD level. The polynomials are
accurate to a few units in the last place, which is all a synthetic image needs; what matters is
that they are the same everywhere. ``tests/test_exactmath.py`` checks both.
"""

from __future__ import annotations

import math

import numpy as np

# Cody-Waite splits: the high parts have trailing zero bits, so k * HI is exact for the k here.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_PIO2_HI = 1.57079632673412561417e00
_PIO2_LO = 6.07710050650619224932e-11
_TWO_OVER_PI = 6.36619772367581382433e-01
_SQRT_HALF = 0.70710678118654752440
_TWO_PI = 2.0 * math.pi

# Taylor series, highest power first, cut where the next term is below 1e-14 of the result
_EXP_COEF = tuple(1.0 / math.factorial(n) for n in range(12, -1, -1))  # |r| <= 0.347
_SIN_COEF = tuple((-1.0) ** n / math.factorial(2 * n + 1) for n in range(7, -1, -1))  # pi/4
_COS_COEF = tuple((-1.0) ** n / math.factorial(2 * n) for n in range(7, -1, -1))
_EXP_COEF_32 = tuple(np.float32(c) for c in _EXP_COEF[-8:])  # to r^7: below float32's ulp
_LN2_HI_32, _LN2_LO_32 = np.float32(0.693359375), np.float32(-2.12194440e-4)
_INV_LN2_32 = np.float32(_INV_LN2)
_LOG_COEF = tuple(1.0 / (2 * n + 1) for n in range(8, -1, -1))  # atanh series, s^2 <= 0.03


def _f64(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _out(result: np.ndarray, like: np.ndarray | float) -> np.ndarray | float:
    """Back to the caller's kind: a float for a scalar, the input's float dtype for an array."""
    if np.ndim(like) == 0 and not isinstance(like, np.ndarray):
        return float(result)
    dtype = like.dtype if np.issubdtype(np.asarray(like).dtype, np.floating) else np.float64
    return result.astype(dtype, copy=False)


def _horner(z: np.ndarray, coefs: tuple[float, ...]) -> np.ndarray:
    p = z * coefs[0]
    p += coefs[1]
    for c in coefs[2:]:
        p *= z  # two roundings, never fused: ufuncs run one at a time
        p += c
    return p


def exp(x: np.ndarray | float) -> np.ndarray | float:
    """e**x, the same bits on every CPU (inputs clipped to [-700, 700]; float32 to [-87, 88])."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        return _exp32(x)
    v = np.clip(_f64(x), -700.0, 700.0)
    k = np.rint(v * _INV_LN2)
    r = (v - k * _LN2_HI) - k * _LN2_LO  # |r| <= 0.347
    return _out(np.ldexp(_horner(r, _EXP_COEF), k.astype(np.int32)), x)


def _exp32(x: np.ndarray) -> np.ndarray:
    """exp in single precision throughout, half the work of the float64 path for images."""
    f = np.float32
    v = np.clip(x, f(-87.0), f(88.0))
    k = np.rint(v * _INV_LN2_32)
    r = v - k * _LN2_HI_32  # exact: the high part has 9 significant bits, |k| < 128
    r -= k * _LN2_LO_32
    return np.ldexp(_horner(r, _EXP_COEF_32), k.astype(np.int32))


def log(x: np.ndarray | float) -> np.ndarray | float:
    """Natural logarithm of x > 0, the same bits on every CPU (x <= 0 gives -inf or nan)."""
    v = _f64(x)
    m, e = np.frexp(v)  # v = m * 2**e, m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)  # m in [0.707, 1.414): |s| <= 0.172
    e = np.where(low, e - 1, e).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # x <= 0: replaced below
        s = (m - 1.0) / (m + 1.0)
    series = 2.0 * s * _horner(s * s, _LOG_COEF)
    out = e * _LN2_HI + (e * _LN2_LO + series)
    out = np.where(v > 0, out, np.where(v == 0, -np.inf, np.nan))
    return _out(out, x)


def power(x: np.ndarray | float, y: float) -> np.ndarray | float:
    """x**y for x >= 0 and y > 0 (0**y = 0), the same bits on every CPU."""
    v = _f64(x)
    safe = np.where(v > 0, v, 1.0)
    out = np.where(v > 0, _f64(exp(y * _f64(log(safe)))), 0.0)
    return _out(out, x)


def _quadrant(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = k pi/2 + r with |r| <= pi/4: (sin r, cos r, k mod 4)."""
    k = np.rint(x * _TWO_OVER_PI)
    r = (x - k * _PIO2_HI) - k * _PIO2_LO
    z = r * r
    return r * _horner(z, _SIN_COEF), _horner(z, _COS_COEF), np.mod(k, 4.0)


def sin(x: np.ndarray | float) -> np.ndarray | float:
    """sin(x) for |x| < 1e6, the same bits on every CPU."""
    s, c, q = _quadrant(_f64(x))
    return _out(np.select([q == 0, q == 1, q == 2], [s, c, -s], -c), x)


def cos(x: np.ndarray | float) -> np.ndarray | float:
    """cos(x) for |x| < 1e6, the same bits on every CPU."""
    s, c, q = _quadrant(_f64(x))
    return _out(np.select([q == 0, q == 1, q == 2], [c, -s, -c], s), x)


def uniform(
    rng: np.random.Generator, low: float, high: float, size: int | tuple[int, ...] | None = None
) -> np.ndarray | float:
    """Uniform on [low, high) from ``rng.random``: one multiply and one add, never fused."""
    u = rng.random(size)
    return float(low + (high - low) * u) if size is None else low + (high - low) * u


def normal(
    rng: np.random.Generator,
    loc: float = 0.0,
    scale: float = 1.0,
    size: int | tuple[int, ...] | None = None,
) -> np.ndarray | float:
    """Gaussian draws by Box-Muller on the functions above (numpy's sampler uses libm's log1p)."""
    u1 = 1.0 - rng.random(size)  # (0, 1]: log is finite
    u2 = rng.random(size)
    radius = np.sqrt(-2.0 * _f64(log(u1)))
    z = radius * _f64(cos(_TWO_PI * _f64(u2)))
    return float(loc + scale * z) if size is None else loc + scale * z


def interp(x: np.ndarray | float, xp: np.ndarray, fp: np.ndarray) -> np.ndarray | float:
    """np.interp (clamped at both ends) in separate ufunc steps: no compiled-in FMA."""
    xp, fp, v = _f64(xp), _f64(fp), _f64(x)
    j = np.clip(np.searchsorted(xp, v, side="right") - 1, 0, xp.size - 2)
    x0, x1, y0, y1 = xp[j], xp[j + 1], fp[j], fp[j + 1]
    t = np.clip((v - x0) / (x1 - x0), 0.0, 1.0)
    return _out(y0 + t * (y1 - y0), x)


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's BICUBIC) at distances |t| < 2."""
    a = -0.5
    t = np.abs(t)
    t2 = t * t
    t3 = t2 * t
    near = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    far = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


def _resize_axis(img: np.ndarray, n: int, axis: int, cubic: bool) -> np.ndarray:
    """Interpolate ``img`` to ``n`` samples along ``axis`` (pixel centres, edges clamped)."""
    m = img.shape[axis]
    u = (np.arange(n, dtype=np.float64) + 0.5) * (m / n) - 0.5
    base = np.floor(u)
    t = u - base
    offsets = (-1, 0, 1, 2) if cubic else (0, 1)
    out = None
    for off in offsets:  # a fixed order of additions, not a BLAS product
        weight = _cubic(t - off) if cubic else np.where(off == 0, 1.0 - t, t)
        idx = np.clip(base.astype(np.intp) + off, 0, m - 1)
        term = np.take(img, idx, axis=axis) * np.expand_dims(weight, 1 - axis).astype(img.dtype)
        out = term if out is None else out + term
    return out


def resize(img: np.ndarray, shape: tuple[int, int], cubic: bool = True) -> np.ndarray:
    """A 2-D float image interpolated to ``shape`` (bicubic or bilinear), the same on every CPU."""
    rows = _resize_axis(np.asarray(img), shape[0], 0, cubic)
    return _resize_axis(rows, shape[1], 1, cubic)
