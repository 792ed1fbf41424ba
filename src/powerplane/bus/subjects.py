"""Subject and stream names on the bus. They follow the topology:

- ``pp.tel.<site>.<hall>.<rack>.<node>``: one node's frames; ``pp.tel.<site>.<hall>.<rack>.rack``: a rack's
  node frames batched in one message (the default, 4x fewer messages for the same node frames);
  ``pp.tel.<site>.<hall>.<row>.row``: a row's node frames in one message (a twin playing many nodes);
- ``pp.tel.<site>.plant``: site meters, racks, halls and batteries (plant frames);
- ``pp.rollup.<site>.<hall>``: hall rollups published by the trackers;
- ``pp.cmd.<site>.<hall>.<device>``: commands (a device is a node name or ``bess-<unit>``), request/reply.

Names are made subject-safe: characters other than letters, digits, ``-`` and ``_`` become ``_``.

>>> token("hall-a/r00/k03")
'hall-a_r00_k03'
>>> tel_subject("texas", "hall-a", "hall-a/r00/k03", "hall-a-r00-k03-n1")
'pp.tel.texas.hall-a.hall-a_r00_k03.hall-a-r00-k03-n1'
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
RACK_BATCH = "rack"
ROW_BATCH = "row"


def token(name: str) -> str:
    """One subject token for a topology name."""
    out = _UNSAFE.sub("_", name)
    if not out:
        raise ValueError("an empty name cannot be a subject token")
    return out


def tel_subject(site: str, hall: str, rack: str, node: str = RACK_BATCH) -> str:
    return f"pp.tel.{token(site)}.{token(hall)}.{token(rack)}.{token(node)}"


def tel_hall_filter(site: str, hall: str) -> str:
    return f"pp.tel.{token(site)}.{token(hall)}.>"


def plant_subject(site: str) -> str:
    return f"pp.tel.{token(site)}.plant"


def rollup_subject(site: str, hall: str) -> str:
    return f"pp.rollup.{token(site)}.{token(hall)}"


def cmd_subject(site: str, hall: str, device: str) -> str:
    return f"pp.cmd.{token(site)}.{token(hall)}.{token(device)}"


def bess_device(unit: int) -> str:
    return f"bess-{unit}"


def tel_stream(site: str) -> str:
    return f"PP_TEL_{token(site).upper().replace('-', '_')}"


def rollup_stream(site: str) -> str:
    return f"PP_ROLLUP_{token(site).upper().replace('-', '_')}"


def lease_bucket(site: str) -> str:
    return f"pp_lease_{token(site).replace('-', '_')}"


def consumer_name(hall: str) -> str:
    return f"tracker-{token(hall)}"
