"""Initial conditions of named few-body families: the one place that builds systems.

Kepler orbits (``kepler``), the families with their characteristic times (``families``) and
systems read from files (``files``). All float64, G = 1, batched as (B, N, D) states.
"""

from aitimestepper.systems.families import (
    FAMILIES,
    SystemSet,
    binaries,
    binary_grid,
    crossing_time,
    democratic_triples,
    draw,
    group_by_size,
    hierarchical_triples,
    mardling_aarseth_limit,
    named_problems,
    planetary_systems,
    plummer_clusters,
    tidal_systems,
)
from aitimestepper.systems.files import load_systems, save_systems
from aitimestepper.systems.kepler import (
    KeplerElements,
    kepler_binary,
    mean_anomaly_from_true,
    orientation_matrix,
    osculating_elements,
    period,
    relative_orbit,
    solve_kepler,
    two_body_frame,
)

__all__ = [
    "FAMILIES",
    "KeplerElements",
    "SystemSet",
    "binaries",
    "binary_grid",
    "crossing_time",
    "democratic_triples",
    "draw",
    "group_by_size",
    "hierarchical_triples",
    "kepler_binary",
    "load_systems",
    "mardling_aarseth_limit",
    "mean_anomaly_from_true",
    "named_problems",
    "orientation_matrix",
    "osculating_elements",
    "period",
    "planetary_systems",
    "plummer_clusters",
    "tidal_systems",
    "relative_orbit",
    "save_systems",
    "solve_kepler",
    "two_body_frame",
]
