"""What the scanner and the analyst know, and what only the truth holds.

A DRO case (:func:`phantomdce.dro.simulate.simulate_case`, and the phantom cases of
:mod:`phantomdce.phantom.case` and :mod:`phantomdce.phantom.store`) carries in its attributes
both the acquisition settings and the subject's truth, because the store is the truth side.
This module is the one place that says which is which:

- :data:`ACQUISITION_ATTRS`: what a site knows from the scanner console, the injector and the
  protocol sheet (timing, sequence, field, agent and dose as prescribed, voxel geometry), and
  the relaxivity ``r1`` *as the analyst assumes it* (the agent's literature value at the
  field; the simulator uses the same value, so no relaxivity error is simulated).
- :data:`SUBJECT_TRUTH_ATTRS`: the subject and the simulation as only the truth knows them:
  the actual flip-angle scale ``b1``, the haematocrit ``hct``, the bolus arrival ``bat`` (and
  ``bat_phase``, ``post_bolus_s``, from which it follows), the AIF's shape ``aif`` and
  amplitude ``aif_scale``, the noise (``snr``, ``noise_sigma``), the arterial voxels' blood
  fraction, how frames are formed (``sampling``), the phantom's flow and fat-suppression
  physics, and the provenance that names the case's true values (``case_values``, ``model``).

Every key of :data:`phantomdce.dro.protocol.PROTOCOL_FIELDS` is in exactly one of the two
(a test checks it, so a new protocol key needs a decision). Estimation keeps only
:func:`acquisition_attrs`; anything not listed as acquisition is treated as truth. Values the
analyst must *assume* instead of knowing (haematocrit, blood T1, B1, bolus arrival) are set by
the estimation pipeline from its own settings as ``assumed_<name>`` attributes, never copied
from the truth. Variables are marked per variable: ``role = "truth"`` or ``"measurement"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ACQUISITION_ATTRS",
    "SUBJECT_TRUTH_ATTRS",
    "PROVENANCE_ATTRS",
    "TRUTH_COORDS",
    "acquisition_attrs",
]

#: Case attributes a site knows (protocol sheet, console, injector; voxel geometry).
ACQUISITION_ATTRS = frozenset(
    {
        "dt",  # s
        "n_baseline",
        "duration",  # s
        "n_frames",
        "fa",  # deg, nominal
        "tr",  # s
        "flip_angles",  # deg, nominal
        "field_strength",  # T
        "agent",
        "r1",  # /mM/s, the relaxivity the analyst assumes (literature value)
        "dose",  # mmol/kg, as prescribed
        "weight",  # kg
        "injection_rate",  # mL/s, as programmed on the injector
        "injection_volume",  # mL, dose * weight / formulation concentration
        "saline_flush",
        "arterial_voxels",  # voxels of the arterial ROI (the measurement's size)
        "vfa_averages",  # averages of each VFA image
        "vfa_sigma_ratio",  # VFA noise SD / dynamic noise SD, from the averages and receiver
        "in_plane_mm",  # acquired voxel geometry, mm
        "slice_mm",
        "gap_mm",
        # phantom acquisitions: the carotid landmarks an analyst clicks on the images,
        # [slice, y, x] mm (phantomdce.phantom.acquire.LANDMARK_ATTRS)
        "carotid_right_mm",
        "carotid_left_mm",
    }
)

#: Case attributes that only the truth holds (the subject, and the simulation's physics).
SUBJECT_TRUTH_ATTRS = frozenset(
    {
        "b1",  # actual / nominal flip angle
        "hct",
        "bat",  # s, the simulated bolus arrival
        "bat_phase",
        "post_bolus_s",  # s; with duration it gives the arrival
        "aif",  # the subject's AIF shape
        "aif_scale",
        "snr",
        "snr_t1_s",  # s, the T1 at which snr is stated (the noise model, with snr)
        "noise_sigma",
        "vfa_noise_sigma",
        "blood_fraction",
        "sampling",
        "fat_suppression",  # efficiency of the simulated fat suppression
        "quantised",
        "in_plane_psf",
        "slice_profile",
        "inflow",
        "artery_velocity_cm_s",
        "vein_velocity_cm_s",
        "inflow_offset_mm",
        "flow_profile",
        "phantom_seed",
        "truth_voxel_mm",
    }
)

#: Case attributes that describe how the case was made; they name true values (the model,
#: the swept values, the seeds) and are not given to estimation either.
PROVENANCE_ATTRS = frozenset(
    {
        "model",
        "case_index",
        "case_values",
        "seed",
        "replicates",
        "scenario",
        "scenario_hash",
        "phantomdce_version",
        "noise_block_voxels",
        "truth_grid_step_s",
        "snr_definition",
        "protocol_units",
        "scanner",  # the [scanner] table (with the site's reference SNR)
        "scanner_derived",  # what it implies: frame time, voxel, snr, scan time

        "roi_voxels",
        "carotid_voxels",
        "grid_shape",
    }
)

#: Coordinates that index the truth, not given to estimation: which voxels share a tissue
#: (``tissue``, ``replicate``), and in a phantom acquisition the voxel types and vessel rings
#: of its truth variables (``type``, ``vessel_type``, ``ring``, ``truth_slice``).
TRUTH_COORDS = ("tissue", "replicate", "type", "vessel_type", "ring", "truth_slice")


def acquisition_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of a case that a site knows (see :data:`ACQUISITION_ATTRS`).

    Parameters
    ----------
    attrs : mapping
        A case's attributes.

    Returns
    -------
    dict
        Those keys of ``attrs`` in :data:`ACQUISITION_ATTRS`, with ``acquisition_units``
        (the units of each, from :data:`phantomdce.dro.protocol.PROTOCOL_FIELDS` or the
        acquisition's mm).
    """
    from phantomdce.dro.protocol import PROTOCOL_FIELDS

    out = {k: v for k, v in attrs.items() if k in ACQUISITION_ATTRS}
    units = {"n_frames": "1", "injection_volume": "mL"}
    out["acquisition_units"] = {
        k: PROTOCOL_FIELDS[k].units if k in PROTOCOL_FIELDS else units.get(k, "mm") for k in out
    }
    return out
