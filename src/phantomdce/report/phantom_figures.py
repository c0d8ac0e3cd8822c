"""Figures of the phantom: truth, acquired and fitted maps side by side; AIF used vs true.

The drawing functions of the report's phantom figures (:mod:`phantomdce.report.phantom`
gathers their data from a run folder). matplotlib is imported inside the functions
(``import phantomdce`` stays light); each function returns a
:class:`matplotlib.figure.Figure` drawn on an Agg canvas. Ktrans is shown in
:data:`phantomdce.params.PARAMETERS` units (/min), lengths in mm, time in s and
concentrations in mM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from phantomdce.params import PARAMETERS
from phantomdce.phantom.anatomy import CLASSES, Phantom
from phantomdce.report.figures import _new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_KTRANS_UNITS = PARAMETERS["Ktrans"].units

__all__ = ["maps_figure", "aif_figure"]


def maps_figure(
    phantom: Phantom,
    acquired: xr.Dataset,
    *,
    slice_index: int | None = None,
    fitted: np.ndarray | None = None,
    roi: np.ndarray | None = None,
) -> Figure:
    """Truth labels and Ktrans (truth grid), the acquired image, truth and fitted Ktrans.

    Parameters
    ----------
    phantom, acquired
        The phantom and one acquisition of it.
    slice_index : int, optional
        Acquired slice to show (default: the one through the tumour centre).
    fitted : ndarray (slice, y, x), optional
        Fitted Ktrans (/min) on the acquired grid (NaN outside the fitted voxels).
    roi : ndarray (slice, y, x) bool, optional
        An ROI outlined on the acquired image.

    Returns
    -------
    matplotlib.figure.Figure
        One row of panels; the fitted panel's title counts the ROI voxels with a finite fit.
    """
    z_mm = acquired["slice"].values
    if slice_index is None:
        slice_index = int(np.argmin(np.abs(z_mm - phantom.landmarks["tumour"][0])))
    k_truth = int(min(phantom.labels.shape[0] - 1, z_mm[slice_index] // phantom.voxel_mm))
    late = acquired["signal"].values[slice_index, :, :, -1]
    panels = [
        ("labels (truth grid)", phantom.labels[k_truth], "tab20", None),
        (
            f"Ktrans truth ({_KTRANS_UNITS}), truth grid",
            phantom.truth_map("Ktrans")[k_truth],
            "viridis",
            (0, 0.5),
        ),
        (
            f"acquired, last frame ({acquired.attrs['in_plane_mm']:g} x "
            f"{acquired.attrs['in_plane_mm']:g} x {acquired.attrs['slice_mm']:g} mm)",
            late,
            "gray",
            None,
        ),
        (
            f"Ktrans truth ({_KTRANS_UNITS}), acquired grid",
            acquired["Ktrans"].values[slice_index],
            "viridis",
            (0, 0.5),
        ),
    ]
    if fitted is not None:
        title = f"Ktrans fitted ({_KTRANS_UNITS})"
        if roi is not None:
            n_roi = int(roi.sum())
            n_ok = int(np.isfinite(fitted[roi]).sum())
            title += f": {n_ok} of {n_roi} ROI voxels fitted"
        panels.append((title, fitted[slice_index], "viridis", (0, 0.5)))
    fig = _new_figure(3.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels))
    extent_t = [
        0,
        phantom.labels.shape[2] * phantom.voxel_mm,
        phantom.labels.shape[1] * phantom.voxel_mm,
        0,
    ]
    ip = float(acquired.attrs["in_plane_mm"])
    extent_a = [0, late.shape[1] * ip, late.shape[0] * ip, 0]
    for i, (ax, (title, img, cmap, lim)) in enumerate(zip(axes, panels, strict=True)):
        extent = extent_t if i < 2 else extent_a
        if i == 0:  # labels: a fixed colour per class, whatever the slice holds
            lim = None
            vmin, vmax = -0.5, 19.5
        else:
            vmin, vmax = (None, None) if lim is None else lim
        im = ax.imshow(img, cmap=cmap, extent=extent, interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("x (mm)", fontsize=7)
        ax.tick_params(labelsize=6)
        if i == 2 and roi is not None:
            ax.contour(
                roi[slice_index],
                levels=[0.5],
                colors="r",
                linewidths=0.8,
                extent=[0, extent_a[1], 0, extent_a[2]],
                origin="upper",
            )
        if lim is not None:
            fig.colorbar(im, ax=ax, shrink=0.7)
    axes[0].set_ylabel("y (mm)", fontsize=7)
    from matplotlib.patches import Patch

    cmap20 = axes[0].images[0].cmap
    present = [c for c in CLASSES.values() if (panels[0][1] == c.label).any()]
    fig.legend(
        handles=[Patch(color=cmap20((c.label + 0.5) / 20), label=c.name) for c in present],
        loc="outside lower left",
        ncol=min(len(present), 8),
        fontsize=6,
        frameon=False,
    )
    fig.suptitle(f"phantom seed {phantom.seed}, slice at {z_mm[slice_index]:.1f} mm")
    return fig


def aif_figure(
    time_s: np.ndarray,
    true_ca: np.ndarray,
    measured: dict[str, np.ndarray],
    *,
    title: str = "Arterial input function: measured on the images vs true",
) -> Figure:
    """Measured (or assumed) AIFs against the true one.

    Parameters
    ----------
    time_s : ndarray
        Frame times (s).
    true_ca : ndarray
        True plasma AIF (mM) at the frames.
    measured : dict
        Label -> plasma AIF (mM) at the frames, one line each.
    title : str
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        The curves against time.
    """
    fig = _new_figure(6.5, 4.0)
    ax = fig.subplots()
    ax.plot(time_s, true_ca, "k-", lw=2, label="true plasma AIF")
    for label, ca in measured.items():
        ax.plot(time_s, ca, "o-", ms=3, lw=1, label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("plasma concentration (mM)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
