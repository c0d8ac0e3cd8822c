"""A parametric digital phantom of the neck at the level of the oropharynx.

:func:`make_neck` draws an axial slab on a fine truth grid from a few geometric
parameters and a seed: air, skin, subcutaneous fat, muscle, bone (mandible and vertebra),
submandibular glands, spinal cord, common/internal/external carotid arteries, jugular
veins, a primary tumour (enhancing rim, poorly perfused hypoxic zone, necrotic core and a
focus of haemorrhage, with seeded lobulation and a spatially varying Ktrans and vp in the
rim) and a metastatic lymph node with a cystic centre.

Every voxel gets a *type*: a tissue class, and for the tumour rim a perfusion level
(Ktrans and vp vary together, 0.5 to 1.5 times the class values; the
rim's spatial variation is quantised into :data:`RIM_LEVELS` levels so that a voxel's
curve is one of a small set; the acquisition mixes those curves exactly). The class table
:data:`CLASSES` gives, per class, native T1 (s) at 1.5 and 3 T, proton density (relative),
fat fraction and kinetic parameters, with where each value comes from. Values marked
"assumed" are phantomdce's own choices within physiological ranges, not taken from one
paper; they are the place to start when adapting the phantom.

Coordinates: arrays are indexed ``[z, y, x]`` (slice, anterior-posterior, left-right),
voxel size in mm; y grows posteriorly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

__all__ = [
    "TissueClass",
    "CLASSES",
    "LESION_CLASSES",
    "NeckGeometry",
    "Phantom",
    "make_neck",
    "RIM_LEVELS",
    "artery_label",
]

#: Number of Ktrans levels the tumour rim's spatial variation is quantised into.
RIM_LEVELS = 8
#: The classes of the primary tumour's outline, as an analyst contours the lesion on the
#: anatomical images: every tumour class, necrosis and haemorrhage included.
LESION_CLASSES = ("tumour_rim", "tumour_hypoxic", "necrosis", "haemorrhage")


@dataclass(frozen=True)
class TissueClass:
    """Properties of one tissue class.

    Attributes
    ----------
    label : int
        Label value in the label map.
    name : str
        Class name.
    t10 : tuple of float
        Native T1 in s at (1.5 T, 3 T) of the water component.
    pd : float
        Proton density relative to muscle.
    fat_fraction : float
        Fraction of the signal from fat (0-1); fat does not enhance.
    kinetics : dict
        Extended Tofts parameters (Ktrans /min, ve, vp) or ``{"blood": 1}`` for vessels,
        empty for tissues without contrast uptake (air, bone cortex).
    source : str
        Where the values come from.
    """

    label: int
    name: str
    t10: tuple[float, float]
    pd: float
    fat_fraction: float
    kinetics: dict[str, float]
    source: str


CLASSES = MappingProxyType(
    {
        c.name: c
        for c in (
            TissueClass(0, "air", (10.0, 10.0), 0.0, 0.0, {}, "no signal"),
            TissueClass(
                1,
                "skin",
                (0.80, 1.00),
                0.9,
                0.1,
                {"Ktrans": 0.05, "ve": 0.2, "vp": 0.02},
                "assumed",
            ),
            TissueClass(
                2,
                "fat",
                (0.34, 0.38),
                1.0,
                0.9,
                {"Ktrans": 0.01, "ve": 0.05, "vp": 0.005},
                "T1 of fat: Gold 2004 AJR 183:343 (unverified); kinetics assumed",
            ),
            TissueClass(
                3,
                "muscle",
                (1.008, 1.412),
                1.0,
                0.0,
                {"Ktrans": 0.03, "ve": 0.10, "vp": 0.01},
                "T1: Stanisz 2005 (unverified); kinetics assumed",
            ),
            TissueClass(
                4,
                "bone",
                (0.55, 0.60),
                0.3,
                0.5,
                {"Ktrans": 0.01, "ve": 0.05, "vp": 0.01},
                "marrow-like mixture, assumed",
            ),
            TissueClass(
                5,
                "gland",
                (0.90, 1.20),
                1.0,
                0.1,
                {"Ktrans": 0.15, "ve": 0.30, "vp": 0.04},
                "assumed",
            ),
            TissueClass(6, "cord", (0.75, 1.05), 0.9, 0.0, {}, "no leakage across the BBB"),
            TissueClass(
                7,
                "artery",
                (1.58, 1.66),
                1.0,
                0.0,
                {"blood": 1.0},
                "blood T1: Sharma 2006 JMRI 23:323",
            ),
            TissueClass(
                8,
                "vein",
                (1.58, 1.66),
                1.0,
                0.0,
                {"blood": 1.0, "vein": 1.0},
                "blood T1: Sharma 2006; venous curve: the arterial one delayed 6 s and dispersed"
                " by an 8 s exponential (an assumption)",
            ),
            TissueClass(
                9,
                "tumour_rim",
                (1.20, 1.50),
                1.0,
                0.0,
                {"Ktrans": 0.30, "ve": 0.35, "vp": 0.06},
                "T1 as phantomdce.signal tumour (unverified); kinetics assumed",
            ),
            TissueClass(
                10,
                "tumour_hypoxic",
                (1.30, 1.60),
                1.0,
                0.0,
                {"Ktrans": 0.06, "ve": 0.30, "vp": 0.015},
                "assumed",
            ),
            TissueClass(
                11,
                "necrosis",
                (1.80, 2.20),
                1.0,
                0.0,
                {"Ktrans": 0.002, "ve": 0.60, "vp": 0.0},
                "assumed: minimal, slow uptake",
            ),
            TissueClass(
                12,
                "node",
                (1.10, 1.40),
                1.0,
                0.0,
                {"Ktrans": 0.20, "ve": 0.30, "vp": 0.04},
                "assumed",
            ),
            TissueClass(
                13,
                "cyst",
                (2.50, 3.00),
                1.0,
                0.0,
                {"Ktrans": 0.001, "ve": 0.9, "vp": 0.0},
                "assumed: proteinaceous fluid of a cystic nodal metastasis (shorter T1 than"
                " CSF, about 4 s at 3 T); minimal, slow leakage into the fluid",
            ),
            TissueClass(
                14,
                "haemorrhage",
                (0.45, 0.50),
                1.0,
                0.0,
                {"Ktrans": 0.001, "ve": 0.3, "vp": 0.0},
                "assumed: subacute (methaemoglobin) haemorrhage, short T1; minimal uptake",
            ),
        )
    }
)
_BY_LABEL = {c.label: c for c in CLASSES.values()}


@dataclass(frozen=True)
class NeckGeometry:
    """Geometric parameters of the neck, in mm (defaults: an adult oropharynx level)."""

    neck_semi_axes: tuple[float, float] = (62.0, 52.0)  # left-right, anterior-posterior
    skin: float = 2.0
    fat: float = 6.0
    airway_semi_axes: tuple[float, float] = (11.0, 7.0)
    vertebra_radius: float = 13.0
    cord_radius: float = 5.0
    carotid_radius: float = 3.5
    branch_radius: float = 2.6
    jugular_semi_axes: tuple[float, float] = (6.0, 4.5)
    bifurcation_fraction: float = 0.4  # of the slab height, from the bottom
    tumour_radius: float = 14.0
    necrosis_fraction: float = 0.35  # of the tumour radius
    hypoxic_fraction: float = 0.65
    node_radius: float = 8.0
    node_cyst_fraction: float = 0.5  # of the node radius; 0 for a solid node
    haemorrhage_radius: float = 4.0  # a focus in the tumour's hypoxic zone; 0 for none


@dataclass
class Phantom:
    """A generated phantom.

    Attributes
    ----------
    labels : ndarray (nz, ny, nx) uint8
        Tissue class labels (see :data:`CLASSES`).
    types : ndarray (nz, ny, nx) int16
        Voxel type: index into :attr:`type_params`.
    type_params : list of dict
        Per type: ``class`` name, ``T10`` (s), ``pd``, ``fat_fraction`` and kinetics
        (``Ktrans`` /min, ``ve``, ``vp`` or ``blood``).
    voxel_mm : float
        Isotropic truth-grid spacing, mm.
    field_strength : float
        T (selects T10).
    seed : int
        Seed the shapes were drawn with.
    """

    labels: np.ndarray
    types: np.ndarray
    type_params: list[dict]
    voxel_mm: float
    field_strength: float
    seed: int
    geometry: NeckGeometry = field(default_factory=NeckGeometry)
    landmarks: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Named points (z, y, x) in mm from the grid's corner, e.g. ``"carotid_right"``."""
    vessel_rho2: np.ndarray | None = None
    """Squared normalised radius (0 on the axis, 1 at the wall) of each vessel voxel in its
    vessel's cross-section (NaN elsewhere): the laminar flow profile's coordinate."""

    def truth_map(self, name: str) -> np.ndarray:
        """A per-voxel map of one type property (e.g. ``"Ktrans"``; NaN where absent)."""
        values = np.array([p.get(name, np.nan) for p in self.type_params], dtype=np.float64)
        return values[self.types]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale_vox: float):
    """Low-frequency random field in [-1, 1] (Fourier-filtered white noise)."""
    white = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    k2 = sum(f**2 for f in freqs)
    field_ = np.real(np.fft.ifftn(np.fft.fftn(white) * np.exp(-k2 * (np.pi * scale_vox) ** 2)))
    return field_ / (np.abs(field_).max() + 1e-12)


def make_neck(
    shape: tuple[int, int, int] = (40, 256, 256),
    *,
    voxel_mm: float = 1.0,
    field_strength: float = 3.0,
    seed: int = 0,
    geometry: NeckGeometry | None = None,
) -> Phantom:
    """Draw a neck phantom.

    Parameters
    ----------
    shape : tuple of int
        Truth grid ``(nz, ny, nx)``.
    voxel_mm : float
        Isotropic truth voxel size, mm (1 mm or finer is recommended).
    field_strength : float
        1.5 or 3.0 T (native T1 of each class).
    seed : int
        Seed of the tumour and node lobulation, rim heterogeneity and small position
        jitter; the same seed gives the same phantom.
    geometry : NeckGeometry, optional
        Sizes and positions in mm.

    Returns
    -------
    Phantom
    """
    if field_strength not in (1.5, 3.0):
        raise ValueError(f"field_strength={field_strength!r}: expected 1.5 or 3.0 T")
    if voxel_mm <= 0 or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape={shape!r}, voxel_mm={voxel_mm!r}: expected 3 sizes >= 1, mm > 0")
    g = geometry or NeckGeometry()
    if not 0 <= g.node_cyst_fraction < 1:
        raise ValueError(
            f"geometry.node_cyst_fraction = {g.node_cyst_fraction!r}: expected a fraction of"
            " the node radius in [0, 1)"
        )
    if not g.haemorrhage_radius >= 0:
        raise ValueError(
            f"geometry.haemorrhage_radius = {g.haemorrhage_radius!r}: expected a radius >= 0 mm"
        )
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2) * voxel_mm,
        (np.arange(ny) - (ny - 1) / 2) * voxel_mm,
        (np.arange(nx) - (nx - 1) / 2) * voxel_mm,
        indexing="ij",
    )
    height = nz * voxel_mm
    lab = np.zeros(shape, dtype=np.uint8)
    a, b = g.neck_semi_axes
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2)  # 1 on the skin surface
    lab[r <= 1] = CLASSES["skin"].label
    lab[r <= 1 - g.skin / min(a, b)] = CLASSES["fat"].label
    lab[r <= 1 - (g.skin + g.fat) / min(a, b)] = CLASSES["muscle"].label

    def ellipse(cx, cy, ax, ay):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1

    rho2 = np.full(shape, np.nan, dtype=np.float32)

    def vessel(cx, cy, ax, ay, where, name):
        r2 = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
        inside = (r2 <= 1) & where
        lab[inside] = CLASSES[name].label
        rho2[inside] = r2[inside]

    jitter = rng.uniform(-2, 2, 4)
    # vertebra and cord, posterior
    vy = 0.35 * b
    lab[ellipse(0, vy, g.vertebra_radius, g.vertebra_radius)] = CLASSES["bone"].label
    lab[ellipse(0, vy + g.vertebra_radius * 0.2, g.cord_radius, g.cord_radius)] = CLASSES[
        "cord"
    ].label
    # mandible: an anterior arc in the upper part of the slab
    upper = z > -height / 2 + 0.6 * height
    arc = ellipse(0, -0.1 * b, 0.8 * a, 0.75 * b) & ~ellipse(0, -0.1 * b, 0.8 * a - 7, 0.75 * b - 7)
    lab[arc & (y < -0.35 * b) & upper] = CLASSES["bone"].label
    # submandibular glands
    for side in (-1, 1):
        lab[ellipse(side * 0.45 * a, -0.35 * b, 10, 7) & ~upper] = CLASSES["gland"].label
    # airway (oropharynx), anterior to the vertebra
    lab[ellipse(0, -0.05 * b, *g.airway_semi_axes)] = CLASSES["air"].label
    # vessels: common carotid below the bifurcation, internal and external above
    bif = z < -height / 2 + g.bifurcation_fraction * height
    corner = np.array([nz, ny, nx]) * voxel_mm / 2  # centred mm -> mm from the corner
    landmarks = {}
    for side in (-1, 1):
        cx, cy = side * (0.42 * a + jitter[0]), 0.05 * b + jitter[1]
        z_common = -height / 2 + 0.5 * g.bifurcation_fraction * height
        landmarks["carotid_" + ("right" if side > 0 else "left")] = tuple(
            float(v) for v in np.array([z_common, cy, cx]) + corner
        )
        vessel(cx, cy, g.carotid_radius, g.carotid_radius, bif, "artery")
        vessel(cx - side * 2, cy + 3, g.branch_radius, g.branch_radius, ~bif, "artery")
        vessel(cx + side * 3, cy - 4, g.branch_radius, g.branch_radius, ~bif, "artery")
        vessel(side * (0.55 * a), 0.12 * b, *g.jugular_semi_axes, True, "vein")
    # tumour: lobulated sphere on the right lateral pharyngeal wall
    tc = np.array([0.0, -0.05 * b + jitter[2], 0.2 * a + jitter[3]])
    d = np.sqrt((z - tc[0]) ** 2 + (y - tc[1]) ** 2 + (x - tc[2]) ** 2)
    lob = _smooth_noise(rng, shape, scale_vox=6.0 / voxel_mm)
    radius = g.tumour_radius * (1 + 0.25 * lob)
    tumour = d <= radius
    lab[tumour] = CLASSES["tumour_rim"].label
    lab[tumour & (d <= g.hypoxic_fraction * radius)] = CLASSES["tumour_hypoxic"].label
    lab[tumour & (d <= g.necrosis_fraction * radius)] = CLASSES["necrosis"].label
    if g.haemorrhage_radius > 0:  # a focus between the necrotic core and the rim
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        hc = tc + direction * 0.5 * (g.necrosis_fraction + g.hypoxic_fraction) * g.tumour_radius
        dh = np.sqrt((z - hc[0]) ** 2 + (y - hc[1]) ** 2 + (x - hc[2]) ** 2)
        hypoxic = lab == CLASSES["tumour_hypoxic"].label
        lab[hypoxic & (dh <= g.haemorrhage_radius)] = CLASSES["haemorrhage"].label
    # metastatic node, left, near the jugular
    nc = np.array([0.0, 0.2 * b, -0.62 * a])
    dn = np.sqrt((z - nc[0]) ** 2 + (y - nc[1]) ** 2 + (x - nc[2]) ** 2)
    node = dn <= g.node_radius * (1 + 0.15 * lob)
    lab[node] = CLASSES["node"].label
    lab[node & (dn <= g.node_cyst_fraction * g.node_radius)] = CLASSES["cyst"].label

    # types: one per class, plus RIM_LEVELS levels of the rim's Ktrans variation
    fi = 0 if field_strength == 1.5 else 1
    type_params: list[dict] = []
    index = {}
    for c in CLASSES.values():
        if c.name == "tumour_rim":
            continue
        index[c.label] = len(type_params)
        type_params.append(
            {
                "class": c.name,
                "T10": c.t10[fi],
                "pd": c.pd,
                "fat_fraction": c.fat_fraction,
                **c.kinetics,
            }
        )
    types = np.zeros(shape, dtype=np.int16)
    for label, t in index.items():
        types[lab == label] = t
    rim = CLASSES["tumour_rim"]
    hetero = _smooth_noise(rng, shape, scale_vox=3.0 / voxel_mm)  # spatial variation
    level = np.clip(((hetero + 1) / 2 * RIM_LEVELS).astype(int), 0, RIM_LEVELS - 1)
    base = len(type_params)
    for k in range(RIM_LEVELS):
        factor = 0.5 + k / (RIM_LEVELS - 1)  # Ktrans from 0.5x to 1.5x the class value
        type_params.append(
            {
                "class": rim.name,
                "T10": rim.t10[fi],
                "pd": rim.pd,
                "fat_fraction": rim.fat_fraction,
                **rim.kinetics,
                "Ktrans": rim.kinetics["Ktrans"] * factor,
                "vp": rim.kinetics["vp"] * factor,
            }
        )
    in_rim = lab == rim.label
    types[in_rim] = base + level[in_rim]
    landmarks["tumour"] = tuple(float(v) for v in tc + corner)
    landmarks["node"] = tuple(float(v) for v in nc + corner)
    in_vessel = np.isin(lab, [CLASSES["artery"].label, CLASSES["vein"].label])
    rho2[~in_vessel] = np.nan
    return Phantom(lab, types, type_params, voxel_mm, field_strength, seed, g, landmarks, rho2)


def artery_label() -> int:
    """Label of the artery class."""
    return CLASSES["artery"].label


def class_of(label: int) -> TissueClass:
    """The class with a given label."""
    return _BY_LABEL[label]
