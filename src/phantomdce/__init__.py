"""phantomdce: digital reference objects that test DCE-MRI protocol recommendations.

Units used everywhere in the package: time in s, concentration in mM, Ktrans, kep and
PS in /min, Fp in mL/100mL/min, volume fractions 0-1, angles in degrees, TR in s.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phantomdce.fit.registry import FitterInfo

try:
    __version__ = version("phantomdce")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__", "open_dro", "open_results", "list_fitters", "get_fitter"]


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


def open_results(path):
    """Open the estimates of a finished (or partly run) ``phantomdce run``, lazily.

    Parameters
    ----------
    path : str or os.PathLike
        The result directory given to ``phantomdce run -o``.

    Returns
    -------
    xarray.DataTree
        Root holds the cases table (``case_name`` and the swept values); one child node
        per case, in the scenario's order, with the estimates (fitter, voxel) in package
        units, ``success``, ``at_limit_<parameter>``, the truth ``true_<parameter>`` and
        the integer ``tissue`` and ``replicate`` index of each voxel.

    See Also
    --------
    phantomdce.engine.run.open_results

    """
    from phantomdce.engine.run import open_results as _open

    return _open(path)


def list_fitters() -> list["FitterInfo"]:
    """Every registered fitter, built-in and plug-in, sorted by name.

    Returns
    -------
    list of phantomdce.fit.registry.FitterInfo
        Name, version, model, input, method, source and instance of each fitter.

    See Also
    --------
    phantomdce.fit.registry.list_fitters

    """
    from phantomdce.fit.registry import list_fitters as _list

    return _list()


def get_fitter(name_or_spec: str) -> Any:
    """The fitter registered under a name, or loaded from a ``"module:attribute"`` spec.

    Parameters
    ----------
    name_or_spec : str
        A registry name (see ``phantomdce fitters``) or ``"module:attribute"``.

    Returns
    -------
    object
        The fitter instance.

    See Also
    --------
    phantomdce.fit.registry.get_fitter

    """
    from phantomdce.fit.registry import get_fitter as _get

    return _get(name_or_spec)
