"""phantomdce: digital reference objects that test DCE-MRI protocol recommendations.

Units used everywhere in the package: time in s, concentration in mM, Ktrans, kep and
PS in /min, Fp in mL/100mL/min, volume fractions 0-1, angles in degrees, TR in s.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phantomdce")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__", "open_dro"]


def open_dro(path):
    """Open a DRO store written by ``phantomdce simulate``.

    Parameters
    ----------
    path : str or os.PathLike
        Path to the ``.zarr`` store.

    Returns
    -------
    xarray.DataTree
        Root holds the ``cases`` table; one child node per case.

    """
    from phantomdce.dro.store import open_dro as _open

    return _open(path)
