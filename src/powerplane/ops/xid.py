"""NVIDIA Xid errors: the catalog as a data table, and a fast parser of kernel-log and syslog lines.

The NVIDIA driver writes one kernel-log line per Xid event::

    NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
    NVRM: Xid (0000:3b:00): 13, Graphics Exception: ...                      (older drivers: no ``PCI:``)
    NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception ...
    NVRM: Xid (PCI:0000:07:00 GPU-I:05): 13, pid=N/A, name=N/A, ...          (MIG: the GPU instance)
    NVRM: Xid (PCI:0000:c1:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)

reached through ``dmesg`` (``[12345.678901] NVRM: ...`` or ``dmesg -T``), a syslog file
(``Nov 23 19:30:00 host kernel: NVRM: ...``), the journal (``2024-11-23T19:30:00+0000 host kernel: ...``) or
syslog over the network (RFC 3164 and RFC 5424 with a ``<PRI>``). :func:`parse_prefix` splits any of these
headers off, :func:`parse_xid` reads the Xid part.

Each code carries the *immediate action* bucket of NVIDIA's Xid catalog ("Analyzing Xid Errors with the Xid
Catalog", Ampere and newer): what an operator (or the self-healing loop) should do first. The workflow buckets
(``WORKFLOW_XID_48``, ``WORKFLOW_NVLINK_ERR``...) mean "look at the events around it"; :data:`WORKFLOW_FALLBACK`
gives the conservative concrete action when nothing else is known. Xid 154 states its recovery action in its
message; :func:`action_for` reads it.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """The Xid catalog's immediate-action buckets."""

    IGNORE = "IGNORE"
    RESTART_APP = "RESTART_APP"
    RESET_GPU = "RESET_GPU"
    RESTART_BM = "RESTART_BM"  # reboot the node (bare metal)
    CHECK_MECHANICALS = "CHECK_MECHANICALS"  # power cables, seating, cooling: a hands-on hardware check
    CONTACT_SUPPORT = "CONTACT_SUPPORT"  # hardware check / RMA with the vendor
    WORKFLOW_XID_48 = "WORKFLOW_XID_48"  # double-bit ECC: read the 63/64/94/95 that follow
    WORKFLOW_NVLINK_ERR = "WORKFLOW_NVLINK_ERR"  # NVLink: read the link error counters, then reset
    WORKFLOW_NVLINK5_ERR = "WORKFLOW_NVLINK5_ERR"  # NVLink 5 (Blackwell) errors
    XID_154_EVAL = "XID_154_EVAL"  # the message says what to do


# The concrete action to take for a workflow bucket when the events around it are unknown.
WORKFLOW_FALLBACK: dict[Action, Action] = {
    Action.WORKFLOW_XID_48: Action.RESET_GPU,
    Action.WORKFLOW_NVLINK_ERR: Action.RESET_GPU,
    Action.WORKFLOW_NVLINK5_ERR: Action.RESET_GPU,
    Action.XID_154_EVAL: Action.RESET_GPU,
}

# How disruptive each action is (0 = nothing to do): to pick the strongest when several events hit one GPU.
ACTION_RANK: dict[Action, int] = {
    Action.IGNORE: 0,
    Action.RESTART_APP: 1,
    Action.WORKFLOW_XID_48: 2,
    Action.WORKFLOW_NVLINK_ERR: 2,
    Action.WORKFLOW_NVLINK5_ERR: 2,
    Action.XID_154_EVAL: 2,
    Action.RESET_GPU: 3,
    Action.RESTART_BM: 4,
    Action.CHECK_MECHANICALS: 5,
    Action.CONTACT_SUPPORT: 5,
}


@dataclass(frozen=True, slots=True)
class XidInfo:
    code: int
    name: str  # the driver's mnemonic
    meaning: str
    action: Action


_A = Action
# (code, mnemonic, meaning, immediate action). NVIDIA Xid catalog for Ampere, Hopper and Blackwell, as published;
# codes 1-7 are listed as unused there (CONTACT_SUPPORT if ever seen).
XID_TABLE: tuple[tuple[int, str, str, Action], ...] = (
    (
        1,
        "ROBUST_CHANNEL_FIFO_ERROR_FIFO_METHOD",
        "Invalid or corrupted push buffer stream (unused)",
        _A.CONTACT_SUPPORT,
    ),
    (2, "ROBUST_CHANNEL_FIFO_ERROR_SW_METHOD", "Invalid or corrupted push buffer stream (unused)", _A.CONTACT_SUPPORT),
    (3, "ROBUST_CHANNEL_FIFO_ERROR_UNK_METHOD", "Invalid or corrupted push buffer stream (unused)", _A.CONTACT_SUPPORT),
    (
        4,
        "ROBUST_CHANNEL_FIFO_ERROR_CHANNEL_BUSY",
        "Invalid or corrupted push buffer stream (unused)",
        _A.CONTACT_SUPPORT,
    ),
    (5, "ROBUST_CHANNEL_FIFO_ERROR_RUNOUT_OVERFLOW", "Unused", _A.CONTACT_SUPPORT),
    (6, "ROBUST_CHANNEL_FIFO_ERROR_PARSE_ERR", "Invalid or corrupted push buffer stream (unused)", _A.CONTACT_SUPPORT),
    (7, "ROBUST_CHANNEL_FIFO_ERROR_PTE_ERR", "Invalid or corrupted push buffer address (unused)", _A.CONTACT_SUPPORT),
    (8, "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "GPU stopped processing (channel idle timeout)", _A.RESTART_APP),
    (9, "ROBUST_CHANNEL_GR_ERROR_INSTANCE", "Driver error programming GPU", _A.RESTART_APP),
    (11, "ROBUST_CHANNEL_GR_ERROR_SW_NOTIFY", "Invalid or corrupted push buffer stream", _A.RESTART_APP),
    (12, "ROBUST_CHANNEL_FAKE_ERROR", "Driver error handling GPU exception", _A.RESTART_APP),
    (
        13,
        "ROBUST_CHANNEL_GR_EXCEPTION",
        "Graphics engine exception (illegal address, warp error): an app fault",
        _A.RESTART_APP,
    ),
    (16, "ROBUST_CHANNEL_DISP_MISSED_NOTIFIER", "Display engine hung", _A.RESTART_APP),
    (26, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "Framebuffer timeout", _A.RESTART_APP),
    (27, "ROBUST_CHANNEL_PBDMA_ERROR", "Video processor exception", _A.RESTART_APP),
    (28, "ROBUST_CHANNEL_VP_ERROR", "Video processor exception", _A.RESTART_APP),
    (29, "ROBUST_CHANNEL_VP2_ERROR", "Video processor exception", _A.RESTART_APP),
    (30, "ROBUST_CHANNEL_BSP_ERROR", "GPU semaphore access error", _A.RESTART_APP),
    (
        31,
        "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT",
        "GPU memory page fault (MMU fault): usually an app fault",
        _A.RESTART_APP,
    ),
    (32, "ROBUST_CHANNEL_PBDMA_ERROR", "Invalid or corrupted push buffer stream (PBDMA error)", _A.RESTART_APP),
    (38, "ROBUST_CHANNEL_FECS_ERR_UNIMP_FIRMWARE_METHOD", "Driver firmware error", _A.RESET_GPU),
    (39, "ROBUST_CHANNEL_FIFO_ERROR_HOST_FSM", "Host FIFO error", _A.RESTART_APP),
    (41, "ROBUST_CHANNEL_CE2_ERROR", "Copy engine exception", _A.RESTART_APP),
    (42, "ROBUST_CHANNEL_VP3_ERROR", "Video processor exception", _A.RESTART_APP),
    (
        43,
        "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
        "GPU stopped processing: the app hit a fault and was torn down",
        _A.RESTART_APP,
    ),
    (44, "ROBUST_CHANNEL_GR_FAULT_DURING_CTXSW", "Graphics engine fault during context switch", _A.RESET_GPU),
    (45, "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL", "Preemptive cleanup after a previous error or an app stop", _A.IGNORE),
    (46, "ROBUST_CHANNEL_NVENC0_ERROR", "GPU stopped processing", _A.RESET_GPU),
    (47, "ROBUST_CHANNEL_GPU_ECC_SBE", "Video processor exception", _A.RESTART_APP),
    (48, "ROBUST_CHANNEL_GPU_ECC_DBE", "Double-bit (uncorrectable) ECC error", _A.WORKFLOW_XID_48),
    (54, "PMU_HALT_ERROR", "Auxiliary power is not connected to the GPU board", _A.CHECK_MECHANICALS),
    (56, "ROBUST_CHANNEL_DISPLAY_ERROR", "Display engine error", _A.RESTART_APP),
    (
        57,
        "ROBUST_CHANNEL_FB_LINK_TRAINING_FAILURE_CRITICAL",
        "Error programming video memory interface",
        _A.CONTACT_SUPPORT,
    ),
    (58, "ROBUST_CHANNEL_FB_CHECK_FAILURE", "Unstable video memory interface detected", _A.CONTACT_SUPPORT),
    (59, "ROBUST_CHANNEL_SEC2_ERROR", "Internal micro-controller error", _A.RESET_GPU),
    (60, "ROBUST_CHANNEL_PMU_ERROR", "Video processor exception", _A.RESTART_APP),
    (61, "PMU_BREAKPOINT", "Internal micro-controller breakpoint/warning", _A.RESET_GPU),
    (62, "PMU_HALT_ERROR", "Internal micro-controller halt", _A.RESET_GPU),
    (
        63,
        "INFOROM_DRAM_RETIREMENT_EVENT",
        "ECC page retirement or row-remapping recorded: reset to activate",
        _A.RESET_GPU,
    ),
    (64, "INFOROM_DRAM_RETIREMENT_FAILURE", "ECC page retirement or row-remapping recording failure", _A.RESET_GPU),
    (65, "ROBUST_CHANNEL_VP4_ERROR", "Video processor exception", _A.RESTART_APP),
    (66, "ROBUST_CHANNEL_NVENC1_ERROR", "Illegal access by driver", _A.RESTART_APP),
    (67, "ROBUST_CHANNEL_NVDEC1_ERROR", "Illegal access by driver", _A.RESTART_APP),
    (68, "ROBUST_CHANNEL_NVDEC0_ERROR", "NVDEC0 exception", _A.RESTART_APP),
    (69, "ROBUST_CHANNEL_GR_CLASS_ERROR", "Graphics engine class error", _A.RESTART_APP),
    (70, "ROBUST_CHANNEL_CE3_ERROR", "CE3 (copy engine) error", _A.RESTART_APP),
    (71, "ROBUST_CHANNEL_CE4_ERROR", "CE4 (copy engine) error", _A.RESTART_APP),
    (72, "ROBUST_CHANNEL_CE5_ERROR", "CE5 (copy engine) error", _A.RESTART_APP),
    (73, "ROBUST_CHANNEL_NVENC2_ERROR", "NVENC2 error", _A.RESTART_APP),
    (74, "NVLINK_ERROR", "NVLink error (link down, CRC or replay storm)", _A.WORKFLOW_NVLINK_ERR),
    (75, "ROBUST_CHANNEL_CE6_ERROR", "CE6 (copy engine) error", _A.RESTART_APP),
    (76, "ROBUST_CHANNEL_CE7_ERROR", "CE7 (copy engine) error", _A.RESTART_APP),
    (77, "ROBUST_CHANNEL_CE8_ERROR", "CE8 (copy engine) error", _A.RESTART_APP),
    (78, "VGPU_START_ERROR", "vGPU start error", _A.RESET_GPU),
    (79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "GPU has fallen off the bus", _A.RESTART_BM),
    (80, "PBDMA_PUSHBUFFER_CRC_MISMATCH", "Corrupted data sent to the GPU", _A.RESET_GPU),
    (81, "ROBUST_CHANNEL_VGA_ERROR", "VGA subsystem error", _A.RESET_GPU),
    (82, "ROBUST_CHANNEL_NVJPG0_ERROR", "NVJPG0 error", _A.RESTART_APP),
    (83, "ROBUST_CHANNEL_NVDEC2_ERROR", "NVDEC1 error", _A.RESTART_APP),
    (84, "ROBUST_CHANNEL_NVDEC3_ERROR", "NVDEC2 error", _A.RESTART_APP),
    (86, "OFA0_ERROR", "OFA (optical flow) exception", _A.RESTART_APP),
    (88, "ROBUST_CHANNEL_NVDEC4_ERROR", "NVDEC3 error", _A.RESTART_APP),
    (92, "EXCESSIVE_SBE_INTERRUPTS", "High single-bit (corrected) ECC error rate", _A.CONTACT_SUPPORT),
    (93, "INFOROM_ERASE_LIMIT_EXCEEDED", "Non-fatal violation of the provisioned InfoROM wear limit", _A.IGNORE),
    (
        94,
        "ROBUST_CHANNEL_CONTAINED_ERROR",
        "Contained memory error: only the affected app must restart",
        _A.RESTART_APP,
    ),
    (95, "ROBUST_CHANNEL_UNCONTAINED_ERROR", "Uncontained memory error: every app on the GPU is hit", _A.RESET_GPU),
    (96, "ROBUST_CHANNEL_NVDEC5_ERROR", "NVDEC5 error", _A.RESTART_APP),
    (97, "ROBUST_CHANNEL_NVDEC6_ERROR", "NVDEC6 error", _A.RESTART_APP),
    (98, "ROBUST_CHANNEL_NVDEC7_ERROR", "NVDEC7 error", _A.RESTART_APP),
    (99, "ROBUST_CHANNEL_NVJPG1_ERROR", "NVJPG1 error", _A.RESTART_APP),
    (105, "ROBUST_CHANNEL_OFA1_ERROR", "OFA1 error", _A.RESTART_APP),
    (106, "ROBUST_CHANNEL_NVENC3_ERROR", "SMBPBI test message", _A.IGNORE),
    (107, "ROBUST_CHANNEL_NVJPG_ERROR", "SMBPBI test message (silent)", _A.IGNORE),
    (109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "Context switch timeout", _A.RESTART_APP),
    (110, "SEC_FAULT_ERROR", "Security fault", _A.RESET_GPU),
    (111, "BUNDLE_ERROR_EVENT", "Display bundle error event", _A.RESTART_APP),
    (112, "DISP_SUPERVISOR_ERROR", "Display supervisor error", _A.RESTART_APP),
    (113, "DP_LT_FAILURE", "DisplayPort link training failure", _A.IGNORE),
    (114, "HEAD_RG_UNDERFLOW", "Display head underflow", _A.IGNORE),
    (116, "FSP_ERROR", "FSP (firmware security processor) error", _A.RESET_GPU),
    (119, "GSP_RPC_TIMEOUT", "GSP (GPU System Processor) RPC timeout", _A.RESET_GPU),
    (120, "GSP_ERROR", "GSP (GPU System Processor) error", _A.RESET_GPU),
    (121, "C2C_ERROR", "C2C (chip-to-chip, Grace-Hopper) link error", _A.RESET_GPU),
    (122, "SPI_PMU_RPC_READ_FAIL", "SPI PMU RPC read failure", _A.IGNORE),
    (123, "SPI_PMU_RPC_WRITE_FAIL", "SPI PMU RPC write failure", _A.IGNORE),
    (124, "SPI_PMU_RPC_ERASE_FAIL", "SPI PMU RPC erase failure", _A.IGNORE),
    (125, "INFOROM_FS_ERROR", "InfoROM file-system error", _A.IGNORE),
    (136, "LINK_TRAINING_FAILED", "PCIe/NVLink link training failed", _A.RESET_GPU),
    (137, "NVLINK_FLA_PRIV_ERR", "NVLink FLA privilege error (an app mapped memory it may not)", _A.RESTART_APP),
    (140, "ROBUST_CHANNEL_UNRECOVERED_ECC_ERROR", "Unrecovered ECC error", _A.RESET_GPU),
    (143, "GPU_INIT_ERROR", "GPU initialization failure", _A.RESET_GPU),
    (144, "NVLINK_SAW_ERROR", "NVLink 5: SAW (switch access window) error", _A.WORKFLOW_NVLINK5_ERR),
    (145, "NVLINK_RLW_ERROR", "NVLink 5: RLW (link) error", _A.WORKFLOW_NVLINK5_ERR),
    (146, "NVLINK_TLW_ERROR", "NVLink 5: TLW (transaction layer) error", _A.WORKFLOW_NVLINK5_ERR),
    (147, "NVLINK_TREX_ERROR", "NVLink 5: TREX error", _A.WORKFLOW_NVLINK5_ERR),
    (148, "NVLINK_NVLPW_CTRL_ERROR", "NVLink 5: NVLPW control error", _A.WORKFLOW_NVLINK5_ERR),
    (149, "NVLINK_NETIR_ERROR", "NVLink 5: NETIR error", _A.WORKFLOW_NVLINK5_ERR),
    (150, "NVLINK_MSE_ERROR", "NVLink 5: MSE (management) error", _A.WORKFLOW_NVLINK5_ERR),
    (151, "KEY_ROTATION_ERROR", "Confidential-computing key rotation error", _A.RESET_GPU),
    (
        154,
        "GPU_RECOVERY_ACTION_CHANGED",
        "The GPU's required recovery action changed (stated in the message)",
        _A.XID_154_EVAL,
    ),
    (155, "NVLINK_SW_DEFINED_ERROR", "NVLink software-defined error", _A.WORKFLOW_NVLINK5_ERR),
    (156, "RESOURCE_RETIREMENT_EVENT", "Resource retirement event (e.g. an SM or memory channel)", _A.RESET_GPU),
    (157, "RESOURCE_RETIREMENT_FAILURE", "Resource retirement failure", _A.CONTACT_SUPPORT),
)

XID_CATALOG: dict[int, XidInfo] = {row[0]: XidInfo(*row) for row in XID_TABLE}

_UNKNOWN = XidInfo(0, "UNKNOWN_XID", "Not in the catalog", Action.CONTACT_SUPPORT)


def xid_info(code: int) -> XidInfo:
    """The catalog entry of ``code``; an unknown code gets ``CONTACT_SUPPORT`` (the catalog's own advice)."""
    info = XID_CATALOG.get(code)
    return info if info is not None else XidInfo(code, _UNKNOWN.name, _UNKNOWN.meaning, _UNKNOWN.action)


# Xid 154 states the recovery action: "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)".
# Values follow NVML's nvmlDeviceGpuRecoveryAction_t.
RECOVERY_ACTIONS: dict[int, Action] = {
    0: Action.IGNORE,  # none
    1: Action.RESET_GPU,  # GPU reset
    2: Action.RESTART_BM,  # node reboot
    3: Action.RESET_GPU,  # drain P2P
    4: Action.RESET_GPU,  # drain P2P and reset the GPU
    5: Action.RESTART_BM,  # recover the IMEX domain
    6: Action.RESET_GPU,  # reset the GPU's PCIe bus
    7: Action.RESTART_BM,  # reboot the system
}
_RECOVERY_RE = re.compile(r"\bto\s+0x([0-9a-fA-F]+)")


def action_for(code: int, message: str = "") -> Action:
    """The immediate action for Xid ``code``; for Xid 154 read from ``message`` when it states one."""
    if code == 154 and (m := _RECOVERY_RE.search(message)) is not None:
        return RECOVERY_ACTIONS.get(int(m.group(1), 16), Action.XID_154_EVAL)
    return xid_info(code).action


# --------------------------------------------------------------------------------------------------------------------
# Line headers: dmesg, syslog (RFC 3164 and 5424), journal, LogHub HPC datasets (BGL, Thunderbird)


@dataclass(slots=True)
class Prefix:
    """What the header of a log line says, and the message after it."""

    message: str
    t_s: float | None = None  # seconds since the epoch, when the header has a wall-clock time
    uptime_s: float | None = None  # dmesg's seconds since boot
    host: str | None = None
    app: str | None = None  # syslog tag / program (``kernel``, ``sshd``)
    severity: int | None = None  # syslog severity 0 (emerg) .. 7 (debug) when the header says it
    label: str | None = None  # the ground-truth label column of LogHub datasets ("-" = normal)


_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_RFC5424 = re.compile(r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?(.*)", re.S)
_RFC3164 = re.compile(
    r"(?:<(\d{1,3})>)?([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d:\d\d:\d\d)(?:\.\d+)? (\S+) ([^\s:\[]+)(?:\[(\d+)\])?: ?(.*)",
    re.S,
)
_ISO_HDR = re.compile(
    r"(?:<(\d{1,3})>)?(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) (\S+) ([^\s:\[]+)"
    r"(?:\[(\d+)\])?: ?(.*)",
    re.S,
)
_DMESG = re.compile(r"\[\s*(\d+\.\d+)\] ?(.*)", re.S)
_DMESG_T = re.compile(r"\[[A-Z][a-z]{2} ([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d:\d\d:\d\d) (\d{4})\] ?(.*)", re.S)
# LogHub: "<label> <epoch> <yyyy.mm.dd> <node> <rest>";
# BGL's rest: "<yyyy-mm-dd-hh.mm.ss.ffffff> <node> RAS KERNEL INFO ..."
_LOGHUB = re.compile(r"(\S+) (\d{9,10}) \d{4}\.\d\d\.\d\d (\S+) (.*)", re.S)
_BGL_REST = re.compile(r"\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d\.\d+ \S+ (\S+) (\S+) ([A-Z]+) (.*)", re.S)
_BGL_LEVELS = {"FATAL": 2, "FAILURE": 2, "SEVERE": 3, "ERROR": 3, "WARNING": 4, "INFO": 6}

_time_cache: dict[tuple[str, ...], float] = {}


def _cached_time(key: tuple[str, ...]) -> float:
    t = _time_cache.get(key)
    if t is None:
        if len(_time_cache) > 100_000:
            _time_cache.clear()
        mon, day, hms, year = key
        h, mi, s = hms.split(":")
        t = float(calendar.timegm((int(year), _MONTHS[mon], int(day), int(h), int(mi), int(s))))
        _time_cache[key] = t
    return t


def _iso_time(text: str) -> float | None:
    t = _time_cache.get((text,))
    if t is None:
        from datetime import UTC, datetime

        try:
            dt = datetime.fromisoformat(text.replace(",", ".").replace(" ", "T", 1))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
        if len(_time_cache) > 100_000:
            _time_cache.clear()
        _time_cache[(text,)] = t
    return t


def parse_prefix(line: str, year: int = 1970) -> Prefix:
    """Split the header off a log line. Times without a zone (RFC 3164, dmesg -T) are read as UTC; RFC 3164 has
    no year, so ``year`` supplies it.

    >>> p = parse_prefix("Nov 23 19:30:00 hall-a-r00-k00-n0 kernel: [ 812.5] NVRM: Xid (0000:3b:00): 13, x", 2024)
    >>> (p.host, p.app, p.uptime_s, p.message)
    ('hall-a-r00-k00-n0', 'kernel', 812.5, 'NVRM: Xid (0000:3b:00): 13, x')
    """
    line = line.rstrip("\r\n")
    c0 = line[:1]
    if c0 == "<":
        if line[4:6] == "1 " or line[3:5] == "1 " or line[2:4] == "1 ":
            m = _RFC5424.match(line)
            if m is not None:
                pri, ts, host, app, _procid, _msgid, msg = m.groups()
                p = Prefix(
                    msg,
                    None if ts == "-" else _iso_time(ts),
                    host=None if host == "-" else host,
                    app=None if app == "-" else app,
                    severity=int(pri) & 7,
                )
                return _dmesg_inner(p)
    elif c0 == "[":
        return _dmesg_inner(Prefix(line))
    m = _RFC3164.match(line)
    if m is not None and m.group(2) in _MONTHS:
        pri, mon, day, hms, host, app, _pid, msg = m.groups()
        t = _cached_time((mon, day, hms, str(year)))
        return _dmesg_inner(Prefix(msg, t, host=host, app=app, severity=None if pri is None else int(pri) & 7))
    if c0 != "<" and not c0.isdigit() and (m := _LOGHUB.match(line)) is not None:
        label, epoch, node, rest = m.groups()
        b = _BGL_REST.match(rest)
        if b is not None:
            return Prefix(b.group(4), float(epoch), host=node, app=f"{b.group(1)} {b.group(2)}",
                          severity=_BGL_LEVELS.get(b.group(3)), label=label)  # fmt: skip
        inner = parse_prefix(rest, int(line.split(" ", 3)[2][:4]))
        inner.label = label
        inner.t_s = float(epoch)
        inner.host = inner.host.split("/", 1)[0] if inner.host else node
        return inner
    m = _ISO_HDR.match(line)
    if m is not None:
        pri, ts, host, app, _pid, msg = m.groups()
        p = Prefix(msg, _iso_time(ts), host=host, app=app, severity=None if pri is None else int(pri) & 7)
        return _dmesg_inner(p)
    return Prefix(line)


def _dmesg_inner(p: Prefix) -> Prefix:
    """Strip a dmesg ``[uptime]`` or ``dmesg -T`` ``[date]`` stamp from the start of the message."""
    msg = p.message
    if msg[:1] != "[":
        return p
    m = _DMESG.match(msg)
    if m is not None:
        p.uptime_s = float(m.group(1))
        p.message = m.group(2)
        return p
    m = _DMESG_T.match(msg)
    if m is not None:
        mon, day, hms, year, rest = m.groups()
        if mon in _MONTHS:
            p.t_s = _cached_time((mon, day, hms, year)) if p.t_s is None else p.t_s
            p.message = rest
    return p


# --------------------------------------------------------------------------------------------------------------------
# The Xid part

PCI_RE = re.compile(r"\b(?:PCI:)?((?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\b")
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?"
    r"(?:\s+GPU-I:(?P<gi>\d+))?(?:\s+GPU-CI:(?P<ci>\d+))?\):\s*(?P<xid>\d+)\s*,\s*"
    r"(?:pid=(?:'(?P<pidq>[^']*)'|\"(?P<pidd>[^\"]*)\"|(?P<pid>[^,\s]*))\s*,\s*"
    r"(?:name=(?P<name>[^,]*?)\s*,\s*)?)?(?P<msg>.*)",
    re.S,
)


def normalize_pci(bus_id: str) -> str:
    """``0000:3B:00.0``, ``00000000:3b:00.0`` or ``3b:00`` -> ``0000:3b:00`` (domain:bus:device, lower case).

    >>> normalize_pci("00000000:3B:00.0")
    '0000:3b:00'
    """
    s = bus_id.lower()
    if s.startswith("pci:"):
        s = s[4:]
    if len(s) > 2 and s[-2] == "." and s[-1].isdigit():
        s = s[:-2]
    parts = s.split(":")
    if len(parts) == 2:
        parts = ["0000", *parts]
    return f"{parts[0][-4:].rjust(4, '0')}:{parts[1]}:{parts[2]}"


@dataclass(slots=True)
class XidRecord:
    """One Xid event read from a log line."""

    xid: int
    pci_bus_id: str  # normalized, ``0000:3b:00``
    message: str
    action: Action
    name: str  # the catalog mnemonic
    pid: int | None = None
    process: str | None = None
    gpu_instance: int | None = None  # MIG GPU instance (GPU-I)
    compute_instance: int | None = None  # MIG compute instance (GPU-CI)
    t_s: float | None = None
    uptime_s: float | None = None
    host: str | None = None


def parse_xid(message: str) -> XidRecord | None:
    """Read the Xid part of a kernel message (header already split off, or not: the match is searched).

    >>> r = parse_xid("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.")
    >>> (r.xid, r.pci_bus_id, r.pid, r.process, r.action.value)
    (79, '0000:3b:00', 1234, 'python3', 'RESTART_BM')
    """
    i = message.find("NVRM: Xid")
    if i < 0:
        return None
    m = _XID.match(message, i)
    if m is None:
        return None
    code = int(m.group("xid"))
    raw_pid = m.group("pid") or m.group("pidq") or m.group("pidd")
    name = m.group("name")
    msg = m.group("msg").strip()
    gi, ci = m.group("gi"), m.group("ci")
    return XidRecord(
        xid=code,
        pci_bus_id=normalize_pci(m.group("pci")),
        message=msg,
        action=action_for(code, msg),
        name=xid_info(code).name,
        pid=int(raw_pid) if raw_pid and raw_pid.isdigit() else None,
        process=None if name is None or name in ("<unknown>", "N/A", "") else name,
        gpu_instance=None if gi is None else int(gi),
        compute_instance=None if ci is None else int(ci),
    )


def parse_xid_line(line: str, year: int = 1970) -> XidRecord | None:
    """Parse a whole log line (any header :func:`parse_prefix` reads); ``None`` when it is not an Xid line."""
    if "Xid" not in line:
        return None
    p = parse_prefix(line, year)
    rec = parse_xid(p.message)
    if rec is not None:
        rec.t_s, rec.uptime_s, rec.host = p.t_s, p.uptime_s, p.host
    return rec


def parse_xid_lines(lines: Iterable[str], year: int = 1970) -> list[XidRecord]:
    """The Xid events of many lines. A substring test drops the non-Xid lines before any regex runs."""
    out = []
    for line in lines:
        if "NVRM: Xid" in line and (rec := parse_xid_line(line, year)) is not None:
            out.append(rec)
    return out


def render_xid_line(
    xid: int, pci_bus_id: str, message: str | None = None, pid: int | None = None, process: str | None = None
) -> str:
    """The kernel message the driver writes for an Xid (current form, with ``PCI:`` and pid/name)."""
    msg = message if message is not None else xid_info(xid).meaning
    pid_s = "'<unknown>'" if pid is None else str(pid)
    return f"NVRM: Xid (PCI:{pci_bus_id}): {xid}, pid={pid_s}, name={process or '<unknown>'}, {msg}"
