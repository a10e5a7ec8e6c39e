"""The tissue of each tumour type, drawn as ellipses: nuclei, glands, stroma, mucin.

Classes differ the way the real ones do (nuclear density, size, stain and
arrangement), so that a model can learn them, and each patient gets its own stain
and cellularity, so that a patient-disjoint split still means something.

Geometry lives in "world" units (pixels of a 700-wide 40X image); an image at
magnification m and width w sees it scaled by w/700 * (m/40)**0.7, so nuclei are
5x larger at 400X than at 40X (10x in reality; 0.7 keeps 40X cheap to draw).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import IMAGE_SIZE
from .raster import Look, Tissue, ellipses, paint
from .seeding import keyed_rng

_ZOOM_EXPONENT = 0.7


def patient_look(seed: int, content_id: str) -> Look:
    """Stain hue/intensity and density jitter shared by all images of one patient."""
    rng = keyed_rng(seed, "look:" + content_id)

    def stain(base: tuple[float, float, float], hue: float) -> np.ndarray:
        vector = np.asarray(base) * rng.uniform(1 - hue, 1 + hue, 3)
        return (vector * rng.uniform(0.85, 1.15)).astype(np.float32)

    return Look(
        hematoxylin=stain((1.05, 1.35, 0.5), 0.12),
        eosin=stain((0.12, 0.95, 0.42), 0.15),
        mucin=stain((0.42, 0.26, 0.12), 0.1),
        background=rng.uniform(0.02, 0.06, 3).astype(np.float32),
        density=float(rng.uniform(0.85, 1.15)),
        nuclear_size=float(rng.uniform(0.9, 1.1)),
    )


def _grid(rng, view, spacing: float, jitter: float = 0.35, margin: float = 0.0):
    """Hexagonal grid of points over the view (plus margin), jittered by jitter*spacing."""
    vw, vh = view
    xs = np.arange(-margin - rng.uniform(0, spacing), vw + margin + spacing, spacing)
    ys = np.arange(-margin - rng.uniform(0, spacing), vh + margin + spacing, spacing * 0.87)
    gx, gy = np.meshgrid(xs, ys)
    gx[1::2] += spacing / 2
    gx = gx.ravel() + rng.uniform(-jitter, jitter, gx.size) * spacing
    gy = gy.ravel() + rng.uniform(-jitter, jitter, gy.size) * spacing
    return gx, gy


def _scatter(rng, view, density: float, margin: float = 0.0):
    """Uniform random points, `density` per square world unit."""
    vw, vh = view[0] + 2 * margin, view[1] + 2 * margin
    n = rng.poisson(density * vw * vh)
    return rng.uniform(0, vw, n) - margin, rng.uniform(0, vh, n) - margin


def _waves(rng, x, y, wavelength: float, n: int = 3) -> np.ndarray:
    """A smooth random field (sum of n plane waves, range [-n, n]) evaluated at points."""
    angle = rng.uniform(0, np.pi, n)
    k = 2 * np.pi / wavelength * rng.uniform(0.7, 1.3, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    return np.cos(np.multiply.outer(x, k * np.cos(angle)) + np.multiply.outer(y, k * np.sin(angle)) + phase).sum(-1)


def _curves(rng, view, count: float, length, amplitude, wavelength, step: float, angle=None):
    """Points every `step` along meandering lines across the view.

    Returns x, y, tangent angle and the relative position along each line (0..1).
    `angle` fixes a common direction (jittered), otherwise each line picks its own.
    """
    n = max(1, rng.poisson(count))
    vw, vh = view
    cx, cy = rng.uniform(0, vw, n), rng.uniform(0, vh, n)
    direction = rng.uniform(0, np.pi, n) if angle is None else angle + rng.normal(0, 0.2, n)
    lengths = rng.uniform(*length, n)
    amp, lam = rng.uniform(*amplitude, n), rng.uniform(*wavelength, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    s = np.arange(0, lengths.max(), step)[None, :] - lengths[:, None] / 2
    keep = np.abs(s) <= lengths[:, None] / 2
    k = (2 * np.pi / lam)[:, None]
    offset = amp[:, None] * np.sin(k * s + phase[:, None])
    slope = amp[:, None] * k * np.cos(k * s + phase[:, None])
    d, nrm = direction[:, None], direction[:, None] + np.pi / 2
    x = cx[:, None] + s * np.cos(d) + offset * np.cos(nrm)
    y = cy[:, None] + s * np.sin(d) + offset * np.sin(nrm)
    tangent = d + np.arctan(slope)
    along = s / lengths[:, None] + 0.5
    return x[keep], y[keep], tangent[keep], along[keep]


def _ring(cx, cy, ra, rb, phi, spacing: float, rng):
    """Points about `spacing` apart on ellipse outlines, with the outward normal angle at each."""
    perimeter = np.pi * (3 * (ra + rb) - np.sqrt((3 * ra + rb) * (ra + 3 * rb)))
    n = np.maximum(4, np.round(perimeter / spacing)).astype(np.int64)
    owner = np.repeat(np.arange(n.size), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = 2 * np.pi * k / n[owner] + rng.uniform(0, 2 * np.pi, n.size)[owner]
    a, b, p = ra[owner], rb[owner], phi[owner]
    ex, ey = a * np.cos(t), b * np.sin(t)
    x = cx[owner] + ex * np.cos(p) - ey * np.sin(p)
    y = cy[owner] + ex * np.sin(p) + ey * np.cos(p)
    return x, y, np.arctan2(a * np.sin(t), b * np.cos(t)) + p


def _nuclei(rng, x, y, radius: float, *, elongation=(1.0, 1.3), theta=None, ink=(0.9, 1.1), pleo=0.08):
    """Nuclei at points: size spread `pleo` (log-normal), aspect in `elongation`, ink in `ink`."""
    n = np.size(x)
    r = radius * rng.lognormal(0, pleo, n)
    aspect = rng.uniform(*elongation, n)
    theta = rng.uniform(0, np.pi, n) if theta is None else theta
    jx, jy = rng.normal(0, 0.15 * radius, (2, n))
    return ellipses(x + jx, y + jy, r * np.sqrt(aspect), r / np.sqrt(aspect), theta, rng.uniform(*ink, n))


def _spindles(rng, view, density: float, look: Look, angle=None) -> np.ndarray:
    """Fibroblast nuclei of the stroma: thin, elongated, along `angle(x, y)` when given."""
    x, y = _scatter(rng, view, density * look.density, margin=5)
    theta = None if angle is None else angle(x, y) + rng.normal(0, 0.15, x.size)
    return _nuclei(rng, x, y, 1.7 * look.nuclear_size, elongation=(5, 9), theta=theta, ink=(0.8, 1.1))


def _inside(shapes: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each point lies inside any of the ellipses `shapes`."""
    ex, ey, a, b, theta = (column[:, None] for column in shapes[:, :5].T)
    u, v = x[None, :] - ex, y[None, :] - ey
    cos, sin = np.cos(theta), np.sin(theta)
    return (((u * cos + v * sin) / a) ** 2 + ((v * cos - u * sin) / b) ** 2 < 1).any(axis=0)


def _collagen(rng, view, level: float) -> np.ndarray:
    """Wavy collagen bundles: long faint eosin streaks along a flow field, as strong as the stroma."""
    x, y = _scatter(rng, view, 1 / 200, margin=20)
    return ellipses(
        x,
        y,
        rng.uniform(10, 22, x.size),
        rng.uniform(1.2, 2.5, x.size),
        _flow(rng, 90)(x, y),
        level * rng.uniform(0.3, 0.8, x.size),
    )


def _glands(rng, cx, cy, radius, aspect, nuclear_radius: float, ink, lumen_gap: float):
    """Glands: radial epithelial nuclei in a ring, flat myoepithelial nuclei outside, central lumen."""
    phi = rng.uniform(0, np.pi, cx.size)
    ra, rb = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    ex, ey, normal = _ring(cx, cy, ra - 1.2 * nuclear_radius, rb - 1.2 * nuclear_radius, phi, 2.1 * nuclear_radius, rng)
    mx, my, m_normal = _ring(cx, cy, ra + 0.3, rb + 0.3, phi, 5 * nuclear_radius, rng)
    nuclei = np.concatenate(
        [
            _nuclei(rng, ex, ey, nuclear_radius, elongation=(1.2, 1.6), theta=normal, ink=ink),
            _nuclei(rng, mx, my, 0.8 * nuclear_radius, elongation=(3, 4), theta=m_normal + np.pi / 2, ink=(0.8, 1.0)),
        ]
    )
    gap = lumen_gap * nuclear_radius
    lumen = ellipses(cx, cy, np.maximum(ra - gap, 0), np.maximum(rb - gap, 0), phi, 1)
    return nuclei, ellipses(cx, cy, ra + 0.8, rb + 0.8, phi, 1), lumen


def _lined(rng, x, y, tangent, half_width, step: float, nuclear_radius: float, *, rows: int, ink, elongation):
    """Epithelium lining both sides of a channel (cleft, slit, papillary core) sampled along a curve.

    Nuclei stand perpendicular to the channel (cuboidal to columnar by `elongation`), `rows`
    deep; returns the nuclei and the epithelial band.
    """
    normal = tangent + np.pi / 2
    nuclei = []
    for side in (-1, 1):
        for row in range(rows):
            offset = side * (half_width + nuclear_radius * (1.2 + 2.2 * row))
            keep = rng.random(x.size) < 0.9
            nuclei.append(
                _nuclei(
                    rng,
                    (x + offset * np.cos(normal))[keep],
                    (y + offset * np.sin(normal))[keep],
                    nuclear_radius,
                    elongation=elongation,
                    theta=normal[keep],
                    ink=ink,
                )
            )
    band = half_width + nuclear_radius * (0.4 + 2.2 * rows)
    return np.concatenate(nuclei), ellipses(x, y, step, band, tangent, 1)


def _halo(nuclei: np.ndarray, grow: float, ink: float) -> np.ndarray:
    """Cytoplasm around tumour cells: each nucleus grown by `grow`, with a flat `ink`."""
    return nuclei * np.float32([1, 1, grow, grow, 1, 0]) + np.float32([0, 0, 0, 0, 0, ink])


def _flow(rng, scale: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A smoothly turning direction field for streaming stroma."""
    base = rng.uniform(0, np.pi)
    angle, phase = rng.uniform(0, np.pi, 2), rng.uniform(0, 2 * np.pi, 2)
    return lambda x, y: (
        base
        + 0.7
        * np.sin((x * np.cos(angle[0]) + y * np.sin(angle[0])) / scale + phase[0])
        * np.cos((x * np.cos(angle[1]) + y * np.sin(angle[1])) / scale + phase[1])
    )


# One recipe per tumour type: (rng, view size in world units, look) -> Tissue.


def _adenosis(rng, view, look) -> Tissue:
    """Lobules of crowded small glands with myoepithelium, small regular nuclei, pale stroma."""
    r = 2.3 * look.nuclear_size
    cx, cy = _grid(rng, view, 21 / look.density, jitter=0.3, margin=15)
    lobule = _waves(rng, cx, cy, 260) > -0.6
    cx, cy = cx[lobule], cy[lobule]
    radius = rng.uniform(7.5, 10, cx.size)
    nuclei, epithelium, lumen = _glands(rng, cx, cy, radius, rng.uniform(1, 2.2, cx.size), r, (0.85, 1.05), 2.4)
    stroma = _spindles(rng, view, 0.002, look)
    return Tissue(np.concatenate([nuclei, stroma]), epithelium, lumen, stroma_level=0.3)


def _fibroadenoma(rng, view, look) -> Tissue:
    """Streaming, loose (slightly myxoid) stroma around compressed slit-like ducts."""
    flow = _flow(rng, 60)
    x, y, tangent, _ = _curves(rng, view, view[0] * view[1] / 120**2, (40, 110), (5, 14), (60, 110), 2.5)
    ducts, epithelium = _lined(
        rng, x, y, tangent, 1.0, 2.5, 2.2 * look.nuclear_size, rows=2, ink=(0.85, 1.05), elongation=(1.0, 1.4)
    )
    lumen = ellipses(x, y, 2.5, 0.9, tangent, 1)
    stroma = _spindles(rng, view, 0.009, look, flow)
    return Tissue(np.concatenate([ducts, stroma]), epithelium, lumen, stroma_level=0.32, mucin_level=0.25)


def _phyllodes(rng, view, look) -> Tissue:
    """Leaf-like clefts lined by epithelium in hypercellular stroma that condenses around them."""
    step = 2.5
    x, y, tangent, along = _curves(rng, view, view[0] * view[1] / 230**2, (160, 420), (15, 40), (90, 170), step)
    half = 1.0 + 5.0 * np.abs(np.sin(np.pi * along * rng.integers(2, 5)))
    nuclei, epithelium = _lined(
        rng, x, y, tangent, half, step, 2.2 * look.nuclear_size, rows=2, ink=(0.85, 1.05), elongation=(1.0, 1.4)
    )
    lumen = ellipses(x, y, step, half, tangent, 1)
    near = rng.random(x.size * 3) < 0.9
    offset = (np.repeat(half, 3) + rng.uniform(8, 22, x.size * 3)) * rng.choice([-1, 1], x.size * 3)
    normal = np.repeat(tangent, 3) + np.pi / 2
    condensed = _nuclei(
        rng,
        (np.repeat(x, 3) + offset * np.cos(normal))[near],
        (np.repeat(y, 3) + offset * np.sin(normal))[near],
        1.8 * look.nuclear_size,
        elongation=(3, 5),
        theta=np.repeat(tangent, 3)[near],
        ink=(0.9, 1.15),
    )
    stroma = _spindles(rng, view, 0.012, look, _flow(rng, 80))
    return Tissue(np.concatenate([nuclei, condensed, stroma]), epithelium, lumen, stroma_level=0.42)


def _tubular(rng, view, look) -> Tissue:
    """Closely packed small round tubules with open lumens, uniform nuclei and scant stroma."""
    r = 2.0 * look.nuclear_size
    cx, cy = _grid(rng, view, 25 / look.density, jitter=0.12, margin=12)
    radius = rng.uniform(9, 10.5, cx.size)
    nuclei, epithelium, lumen = _glands(rng, cx, cy, radius, rng.uniform(1, 1.3, cx.size), r, (0.9, 1.1), 2.2)
    return Tissue(nuclei, epithelium, lumen, stroma_level=0.35)


def _ductal(rng, view, look) -> Tissue:
    """Sheets and nests of crowded, large, pleomorphic, hyperchromatic nuclei; desmoplastic stroma."""
    r = 3.5 * look.nuclear_size
    x, y = _grid(rng, view, 2.4 * r / look.density, jitter=0.25, margin=8)
    nest = _waves(rng, x, y, 170) > -1.0
    cells = _nuclei(rng, x[nest], y[nest], r, elongation=(1, 1.6), ink=(1.1, 1.6), pleo=0.25)
    cytoplasm = _halo(cells, 2.1, 1.0)
    lx, ly = _scatter(rng, view, 0.002)
    lymphocytes = _nuclei(rng, lx, ly, 1.5, ink=(1.3, 1.5))
    stroma = _spindles(rng, view, 0.003, look)
    return Tissue(np.concatenate([cells, lymphocytes, stroma]), cytoplasm, stroma_level=0.5)


def _lobular(rng, view, look) -> Tissue:
    """Small uniform discohesive cells in single-file lines through dense pink stroma."""
    r = 2.3 * look.nuclear_size
    step = 2.5 * r
    x, y, tangent, _ = _curves(
        rng,
        view,
        (view[0] + view[1]) / 22 * look.density,
        (0.6 * view[0], 1.4 * view[0]),
        (3, 10),
        (60, 130),
        step,
        angle=rng.uniform(0, np.pi),
    )
    keep = rng.random(x.size) < 0.85
    x, y, tangent = x[keep], y[keep], tangent[keep]
    sx, sy = _scatter(rng, view, 0.003 * look.density)
    cells = np.concatenate(
        [
            _nuclei(rng, x, y, r, elongation=(1.1, 1.4), theta=tangent, ink=(1.0, 1.25)),
            _nuclei(rng, sx, sy, r, ink=(1.0, 1.25)),
        ]
    )
    cytoplasm = _halo(cells, 1.7, 0.8)
    stroma = _spindles(rng, view, 0.002, look)
    return Tissue(np.concatenate([cells, stroma]), cytoplasm, stroma_level=0.55)


def _mucinous(rng, view, look) -> Tissue:
    """Pale blue mucin pools with small floating clusters of tumour cells, thin septa between."""
    r = 2.8 * look.nuclear_size
    px, py = _grid(rng, view, 140, jitter=0.45, margin=80)
    pools = ellipses(
        px, py, rng.uniform(50, 95, px.size), rng.uniform(40, 75, px.size), rng.uniform(0, np.pi, px.size), 1
    )
    pool = np.repeat(np.arange(px.size), rng.poisson(2.5 * look.density, px.size))  # a few clusters each
    angle, dist = rng.uniform(0, 2 * np.pi, pool.size), rng.uniform(0, 45, pool.size)
    kx, ky = px[pool] + dist * np.cos(angle), py[pool] + dist * np.sin(angle)
    cells_per_cluster = rng.integers(5, 22, kx.size)
    radius = np.sqrt(cells_per_cluster) * 1.4 * r
    cluster = np.repeat(np.arange(kx.size), cells_per_cluster)
    angle, dist = rng.uniform(0, 2 * np.pi, cluster.size), np.sqrt(rng.random(cluster.size)) * radius[cluster]
    cells = _nuclei(
        rng, kx[cluster] + dist * np.cos(angle), ky[cluster] + dist * np.sin(angle), r, ink=(1.0, 1.3), pleo=0.15
    )
    cytoplasm = ellipses(kx, ky, radius + 2.5 * r, radius + 2 * r, 0, 1)
    stroma = _spindles(rng, view, 0.003, look)
    stroma = stroma[~_inside(pools, stroma[:, 0], stroma[:, 1])]
    return Tissue(np.concatenate([cells, stroma]), cytoplasm, mucin=pools, stroma_level=0.5)


def _papillary(rng, view, look) -> Tissue:
    """Finger-like papillae: thin fibrovascular cores lined by stratified columnar cells, in open space."""
    step = 2.6
    x, y, tangent, _ = _curves(rng, view, view[0] * view[1] / 95**2, (70, 200), (5, 16), (60, 120), step)
    core = rng.uniform(2.5, 4.5)
    nuclei, epithelium = _lined(
        rng, x, y, tangent, core, step, 2.6 * look.nuclear_size, rows=2, ink=(1.15, 1.45), elongation=(1.6, 2.4)
    )
    cores = ellipses(x, y, step, core, tangent, 0.5)
    keep = rng.random(x.size) < 0.3
    capillary = _nuclei(rng, x[keep], y[keep], 1.6, elongation=(5, 8), theta=tangent[keep])
    return Tissue(np.concatenate([nuclei, capillary]), epithelium, stroma=cores, stroma_level=0.04)


_RECIPES: dict[str, Callable[..., Tissue]] = {  # by tumour type code
    "A": _adenosis,
    "F": _fibroadenoma,
    "PT": _phyllodes,
    "TA": _tubular,
    "DC": _ductal,
    "LC": _lobular,
    "MC": _mucinous,
    "PC": _papillary,
}


def render_image(
    code: str, magnification: int, *, size: tuple[int, int] = IMAGE_SIZE, seed: int = 0, patient: str = "sample"
) -> np.ndarray:
    """One synthetic (height, width, 3) uint8 image of tumour type `code`; for previews and tests.

    Images of one `patient` share a stain and cellularity; `seed` picks both them and the field.
    """
    look = patient_look(seed, f"{code}:{patient}")
    rng = keyed_rng(seed, f"{code}:{patient}-{magnification}")
    return render(code, magnification, size, look, rng)


def render(code: str, magnification: int, size: tuple[int, int], look: Look, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 field of type `code` at `magnification`, `size` (width, height)."""
    width, height = size
    scale = width / IMAGE_SIZE[0] * (magnification / 40) ** _ZOOM_EXPONENT
    view = (width / scale, height / scale)
    tissue = _RECIPES[code](rng, view, look)
    tissue = tissue._replace(stroma=np.concatenate([tissue.stroma, _collagen(rng, view, tissue.stroma_level)]))
    return paint(tissue, look, (height, width), scale, rng)
