"""Score parametric maps made by other software from a ``phantomdce export``.

``phantomdce score DIR --maps Ktrans=a.nii.gz,ve=b.nii.gz,vp=c.nii.gz [--name vendorX] -o OUT``
reads each map, maps its pixels back to the store's voxels through ``DIR/manifest.json``
(:mod:`phantomdce.dro.export`) and writes into ``OUT`` exactly what ``phantomdce run``
writes (``run.json``, ``estimates.zarr``, ``metrics.csv``, ``failures.csv``, ...), with the
external software as one fitter named ``--name``: ``phantomdce report``, ``baseline`` and
``check`` work on ``OUT`` as on any run.

How: the export's ``scenario.toml`` is planned as a run (:func:`phantomdce.engine.run.plan_run`)
whose one fitter returns the maps' values for the voxels of each unit
(:class:`ExternalMaps`); every unit is then run by :func:`phantomdce.engine.run.run_unit`
(which simulates the truth again, the same values as the export's) and the metrics by
:func:`phantomdce.engine.run.finalize`. The fitter's ``version`` is a digest of the maps'
values, so a folder scored with other maps is refused, not mixed. The run's ``[fit]`` is
replaced by this one fitter with the default pipeline (T1 from the VFA series, measured
baseline, the exported true AIF: the information the export gives the software); its output
is not used (the maps are the estimates), but it sets which Cramér-Rao bound
(``crlb_sd``, ``efficiency`` in ``metrics.csv``) the maps are judged by, as for a built-in
concentration fitter.

Maps (``PARAM=PATH``; ``PARAM`` one of the parameters of a model: Ktrans, ve, vp, fp, ps,
in package units: Ktrans and ps in /min, fp in mL/100mL/min, ve and vp fractions):

- NIfTI (``.nii``, ``.nii.gz``): an image of the export's grid, ``(cols, rows[, 1])``
  in the orientation of the export's NIfTI files or any axis flip/permutation of it that
  the image's affine states (e.g. ``dcm2niix``'s);
- DICOM: a ``.dcm`` file or a folder holding one (one slice, ``Rows`` x ``Columns`` of the
  export, ``RescaleSlope``/``RescaleIntercept`` applied);
- CSV: columns ``voxel`` (store voxel index) and the parameter's name or ``value``, and
  ``case`` when the export has more than one case.

A path holding ``{case}`` is read once per case with the case's folder name put in
(``maps/{case}/Ktrans.nii.gz``); an export of several cases needs it, or a CSV with a
``case`` column. A voxel whose value is not finite is a failed fit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from phantomdce.dro.config import ConfigError
from phantomdce.params import MODELS, PARAMETERS

__all__ = [
    "score",
    "parse_maps",
    "read_map",
    "load_manifest",
    "check_units",
    "ExternalMaps",
    "UnitWarning",
    "SCORED",
]

#: Parameters a map may give (the models' own; kep and Ktrans of the 2CX models are derived).
MAP_PARAMETERS = tuple(dict.fromkeys(p for m in MODELS.values() for p in m.parameters))


class UnitWarning(UserWarning):
    """A map whose values look like another unit than the package's."""


class _Scored:
    """Namespace of the fitters being scored (``phantomdce.engine.score:SCORED.<key>``)."""


#: The external fitters of this process, by key; the run resolves them by spec.
SCORED = _Scored()


@dataclass
class ExternalMaps:
    """A fitter that returns another program's maps for the voxels it is asked about.

    The engine runs one unit (case, voxels ``start``..``stop``) at a time; :func:`score`
    sets :attr:`current` before each unit, so :meth:`fit` knows which voxels it gets.
    """

    name: str
    version: str
    model: str
    values: dict[str, dict[str, np.ndarray]] = field(repr=False)
    input: str = "concentration"
    method: str = "external software (maps scored by phantomdce score)"
    current: tuple[str, int, int] | None = None

    def fit(self, data: xr.Dataset) -> xr.Dataset:
        """The maps' values for the current unit's voxels; NaN fails a voxel."""
        if self.current is None:
            raise RuntimeError("ExternalMaps.fit called outside phantomdce score")
        case, a, b = self.current
        n = data.sizes["voxel"]
        if n != b - a:
            raise RuntimeError(f"unit of {b - a} voxels, given {n}")
        maps = self.values[case]
        out = {p: ("voxel", np.asarray(v[a:b], dtype=np.float64)) for p, v in maps.items()}
        ok = np.all([np.isfinite(v[a:b]) for v in maps.values()], axis=0)
        out["success"] = ("voxel", ok)
        return xr.Dataset(out)


def parse_maps(text: str) -> dict[str, str]:
    """Parse ``"Ktrans=a.nii.gz,ve=b.nii.gz"`` into a mapping of parameter name to map path.

    Raises
    ------
    ConfigError
        An item without ``=``, an unknown parameter (with a suggestion), a parameter twice.
    """
    from phantomdce.dro.config import did_you_mean

    maps: dict[str, str] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        key, eq, path = item.partition("=")
        key, path = key.strip(), path.strip()
        if not eq or not key or not path:
            raise ConfigError(
                f"--maps item {item!r}: expected PARAM=PATH, e.g. Ktrans=Ktrans.nii.gz"
            )
        if key not in MAP_PARAMETERS:
            raise ConfigError(
                f"--maps {key}={path}: unknown parameter"
                f" {key!r}{did_you_mean(key, MAP_PARAMETERS)};"
                f" expected one of {list(MAP_PARAMETERS)}"
            )
        if key in maps:
            raise ConfigError(f"--maps: parameter {key!r} given twice ({maps[key]} and {path})")
        maps[key] = path
    if not maps:
        raise ConfigError("--maps: no map given; expected PARAM=PATH[,PARAM=PATH...]")
    return maps


def model_of(params: set[str] | list[str]) -> str:
    """The model whose parameters are exactly ``params``.

    Raises
    ------
    ConfigError
        No model has exactly these parameters (a missing map), naming what each model needs.
    """
    given = set(params)
    for name, spec in MODELS.items():
        if set(spec.parameters) == given:
            return name
    options = "; ".join(f"{n}: {', '.join(s.parameters)}" for n, s in MODELS.items())
    near = [n for n, s in MODELS.items() if given < set(s.parameters)]
    hint = ""
    if near:
        missing = sorted(set(MODELS[near[0]].parameters) - given)
        hint = f" (missing map for {', '.join(missing)} of the {near[0]} model?)"
    raise ConfigError(
        f"--maps gives {sorted(given)}: no model has exactly these parameters{hint};"
        f" expected the maps of one model: {options}"
    )


def load_manifest(export_dir: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a ``phantomdce export`` folder.

    Raises
    ------
    ConfigError
        No manifest, or not one written by ``phantomdce export``.
    """
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{export_dir}: no manifest.json; expected a `phantomdce export` folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != 1:
        version = manifest.get("manifest_version") if isinstance(manifest, dict) else None
        raise ConfigError(f"{path}: manifest_version {version!r}: expected 1")
    return manifest


def _pixels(manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every store voxel, from the manifest's ``voxel_index``."""
    index = np.asarray(manifest["layout"]["voxel_index"], dtype=np.int64)
    n = int(manifest["n_voxels"])
    rows, cols = np.nonzero(index >= 0)
    v = index[rows, cols]
    row, col = np.empty(n, np.int64), np.empty(n, np.int64)
    row[v], col[v] = rows, cols
    return row, col


def _read_nifti(path: Path, manifest: Mapping[str, Any], what: str) -> np.ndarray:
    """A NIfTI map as (rows, cols), reoriented to the export's axes by its affine."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float64)
    rows, cols = manifest["image"]["rows"], manifest["image"]["cols"]
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or sorted(data.shape[:2]) != sorted((cols, rows)) or data.shape[2] != 1:
        raise ConfigError(
            f"{what}: {path} has shape {tuple(img.shape)}: expected the export's grid"
            f" ({cols}, {rows}, 1) (columns, rows, one slice)"
        )
    target = io_orientation(np.asarray(manifest["image"]["nifti_affine"]))
    data = apply_orientation(data, ornt_transform(io_orientation(img.affine), target))
    if data.shape[:2] != (cols, rows):
        raise ConfigError(
            f"{what}: {path} has shape {tuple(img.shape)} in its orientation: expected"
            f" ({cols}, {rows}, 1) in the export's"
        )
    return data[:, :, 0].T


def _read_dicom(path: Path, manifest: Mapping[str, Any], what: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    files = sorted(path.glob("*.dcm")) if path.is_dir() else [path]
    if len(files) != 1:
        raise ConfigError(f"{what}: {path} holds {len(files)} DICOM files: expected one slice")
    ds = pydicom.dcmread(files[0])
    data = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    rows, cols = manifest["image"]["rows"], manifest["image"]["cols"]
    if data.shape != (rows, cols):
        raise ConfigError(
            f"{what}: {files[0]} is {data.shape[0]} x {data.shape[1]} pixels: expected the"
            f" export's {rows} x {cols} (Rows x Columns)"
        )
    return data


def _read_csv(path: Path, param: str, case: str, n_cases: int, n: int, what: str) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        col = param if param in columns else "value" if "value" in columns else None
        if "voxel" not in columns or col is None:
            raise ConfigError(
                f"{what}: {path} has columns {columns}: expected 'voxel' and {param!r} (or"
                " 'value')" + (", and 'case'" if n_cases > 1 else "")
            )
        if n_cases > 1 and "case" not in columns:
            raise ConfigError(
                f"{what}: {path} has no 'case' column, and the export has {n_cases} cases"
            )
        out = np.full(n, np.nan)
        seen = np.zeros(n, dtype=bool)
        for k, row in enumerate(reader, start=2):
            if "case" in columns and row["case"] != case:
                continue
            try:
                v = int(row["voxel"])
                value = float(row[col]) if row[col].strip() else np.nan
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{what}: {path} line {k}: voxel {row['voxel']!r}, {col} {row[col]!r}:"
                    " expected an integer voxel and a number"
                ) from None
            if not 0 <= v < n:
                raise ConfigError(f"{what}: {path} line {k}: voxel {v}: expected 0..{n - 1}")
            out[v], seen[v] = value, True
    if not seen.any():
        raise ConfigError(f"{what}: {path} has no row for case {case!r}")
    return out


def read_map(
    path: str | Path, param: str, case: Mapping[str, Any], manifest: Mapping[str, Any]
) -> np.ndarray:
    """One case's map of ``param`` as per-voxel values in the store's voxel order.

    Parameters
    ----------
    path : str or Path
        The map (``{case}`` replaced by the case's folder name).
    param : str
        Its parameter.
    case : mapping
        The case's manifest entry.
    manifest : mapping
        The export's manifest.

    Returns
    -------
    ndarray
        ``(n_voxels,)`` float64; NaN where the map has no finite value.

    Raises
    ------
    ConfigError
        A missing file or a map of the wrong shape, naming the map and what was expected.
    """
    p = Path(str(path).replace("{case}", case["folder"]))
    what = f"map {param} ({case['name']})"
    n = int(manifest["n_voxels"])
    if not p.exists():
        raise ConfigError(f"{what}: {p} does not exist")
    name = p.name.lower()
    if name.endswith(".csv"):
        return _read_csv(p, param, case["name"], int(manifest["n_cases"]), n, what)
    if name.endswith((".nii", ".nii.gz")):
        image = _read_nifti(p, manifest, what)
    elif p.is_dir() or name.endswith(".dcm"):
        image = _read_dicom(p, manifest, what)
    else:
        raise ConfigError(
            f"{what}: {p}: expected a .nii/.nii.gz, .csv, .dcm file or a DICOM folder"
        )
    row, col = _pixels(manifest)
    return image[row, col]


def check_units(param: str, values: np.ndarray, truth: np.ndarray | None) -> None:
    """Refuse a map whose values look like another unit; warn when merely suspicious.

    Ktrans (or ps) in /s is about 60 times smaller than the truth in /min; a volume
    fraction given as a percentage exceeds 1; fp in mL/mL/min is 100 times smaller.

    Raises
    ------
    ConfigError
        Naming the map, its median and what was expected.
    """
    ok = np.isfinite(values)
    if not ok.any():
        return
    median = float(np.median(values[ok]))
    units = PARAMETERS[param].units
    if param in ("ve", "vp"):
        over = float(np.mean(values[ok] > 1.0))
        if over > 0.5:
            raise ConfigError(
                f"map {param}: median {median:.4g}, {over:.0%} of the values > 1: expected a"
                " fraction 0-1 (a percentage? divide by 100)"
            )
    if truth is None:
        return
    t_ok = ok & np.isfinite(truth) & (truth > 0)
    if not t_ok.any():
        return
    ratio = float(np.median(values[t_ok]) / np.median(truth[t_ok]))
    factors = {"Ktrans": (60.0, "/s"), "ps": (60.0, "/s"), "fp": (100.0, "mL/mL/min")}
    if param in factors:
        f, unit = factors[param]
        if f / 3 <= 1.0 / ratio <= f * 3 if ratio > 0 else False:
            raise ConfigError(
                f"map {param}: median {median:.4g}, {1 / ratio:.3g} times smaller than the"
                f" truth's median: expected {units}; was it written in {unit}? (multiply"
                f" by {f:g})"
            )
    if ratio > 10 or 0 < ratio < 0.1:
        warnings.warn(
            f"map {param}: median {median:.4g} is {ratio:.3g} x the truth's median: expected"
            f" {units}; check the map's unit",
            UnitWarning,
            stacklevel=2,
        )


def _truth(export_dir: Path, case: Mapping[str, Any], param: str, manifest) -> np.ndarray | None:
    rel = case.get("truth_maps", {}).get(param)
    if rel is None:
        return None
    return read_map(export_dir / case["folder"] / rel, param, case, manifest)


def score(
    export_dir: str | Path,
    maps: Mapping[str, str] | str,
    out: str | Path,
    *,
    name: str = "external",
) -> list[dict[str, Any]]:
    """Score another program's maps of an export like a run's fitter (module docstring).

    Parameters
    ----------
    export_dir : str or Path
        A ``phantomdce export`` folder.
    maps : mapping or str
        Parameter -> map path (or the ``--maps`` text).
    out : str or Path
        Result folder (new; or the same scoring, which is resumed).
    name : str
        The external software's fitter name.

    Returns
    -------
    list of dict
        The metrics rows (as :func:`phantomdce.engine.run.finalize`).

    Raises
    ------
    ConfigError
        A bad map (missing, wrong shape, unit mistake), an unknown parameter, a name
        already used by an installed fitter, an ``OUT`` holding something else.
    """
    from phantomdce.dro.scenario import check_name
    from phantomdce.engine.run import _jobs, finalize, plan_run, run_unit

    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    maps = parse_maps(maps) if isinstance(maps, str) else dict(maps)
    for key in maps:
        if key not in MAP_PARAMETERS:
            raise ConfigError(
                f"map {key}: unknown parameter; expected one of {list(MAP_PARAMETERS)}"
            )
    model = model_of(list(maps))
    name = check_name("--name", name)
    from phantomdce.fit.registry import list_fitters

    if name in {i.name for i in list_fitters()}:
        raise ConfigError(f"--name {name}: an installed fitter has this name; choose another")
    cases = manifest["cases"]
    many = [k for k, p in maps.items() if "{case}" not in str(p) and not str(p).endswith(".csv")]
    if len(cases) > 1 and many:
        raise ConfigError(
            f"map {many[0]}: {maps[many[0]]} is one image, and the export has {len(cases)}"
            " cases: put {case} in the path (e.g. maps/{case}/Ktrans.nii.gz) or give a CSV"
            " with a 'case' column"
        )
    values: dict[str, dict[str, np.ndarray]] = {}
    h = hashlib.sha256(name.encode())
    for case in cases:
        values[case["name"]] = {}
        for param, path in maps.items():
            v = read_map(path, param, case, manifest)
            check_units(param, v, _truth(export_dir, case, param, manifest))
            values[case["name"]][param] = v
            h.update(f"{case['name']}:{param}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
    version = h.hexdigest()[:16]
    key = f"f_{version}"
    fitter = ExternalMaps(name=name, version=version, model=model, values=values)
    setattr(SCORED, key, fitter)
    spec = f"{__name__}:SCORED.{key}"
    # the default pipeline (T1 from the VFA series, measured baseline, the exported true AIF):
    # what the export gives the software; it sets the Cramer-Rao bound the maps are judged by
    fit = {"fitters": [spec], "isolate": "none"}
    plan = plan_run(export_dir / "scenario.toml", out, fitters=[spec], overrides={"fit": fit})
    try:
        by_name = {c["name"]: c for c in cases}
        for job in _jobs(plan, plan.pending()):
            case = plan.scenario.cases()[job["case_index"]]
            if case.name not in by_name:
                raise ConfigError(f"{export_dir}: the manifest has no case {case.name!r}")
            fitter.current = (case.name, job["start"], job["stop"])
            run_unit(job)
        fitter.current = None
        return finalize(plan)
    finally:
        plan.release()


# -- command line ----------------------------------------------------------------------------


def cli_score(args: Any) -> int:
    """``phantomdce score`` (its arguments: :mod:`phantomdce.score_cli`); the exit status."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnitWarning)
        rows = score(args.export, args.maps, args.output, name=args.name)
    for w in caught:
        print(f"phantomdce: warning: {w.message}", file=sys.stderr)
    print(f"results: {args.output}/estimates.zarr, {args.output}/metrics.csv")
    for r in rows:
        print(
            f"  {r['case']} {r['fitter']} {r['parameter']}: bias {r['bias']:.4g},"
            f" rel bias {r['rel_bias_pct']:.3g} %, CV {r['cv_pct']:.3g} %,"
            f" failures {r['failure_rate']:.3f}"
        )
    if args.report:
        from phantomdce.cli import main

        return main(["report", str(args.output), "-o", str(args.report)])
    return 0
