"""The Xid catalog and the kernel-log line parser."""

from __future__ import annotations

import calendar

import pytest

from powerplane.ops.xid import (
    XID_CATALOG,
    XID_TABLE,
    Action,
    action_for,
    normalize_pci,
    parse_prefix,
    parse_xid_line,
    parse_xid_lines,
    render_xid_line,
    xid_info,
)

T_NOV23 = calendar.timegm((2024, 11, 23, 19, 30, 0))


def test_catalog_has_40_codes_with_valid_buckets() -> None:
    assert len(XID_CATALOG) >= 40
    assert len({row[0] for row in XID_TABLE}) == len(XID_TABLE)  # no duplicate codes
    for info in XID_CATALOG.values():
        assert isinstance(info.action, Action)
        assert info.name and info.meaning


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (13, Action.RESTART_APP),
        (31, Action.RESTART_APP),
        (43, Action.RESTART_APP),
        (48, Action.WORKFLOW_XID_48),
        (63, Action.RESET_GPU),
        (64, Action.RESET_GPU),
        (74, Action.WORKFLOW_NVLINK_ERR),
        (79, Action.RESTART_BM),
        (92, Action.CONTACT_SUPPORT),
        (94, Action.RESTART_APP),
        (95, Action.RESET_GPU),
        (119, Action.RESET_GPU),
        (120, Action.RESET_GPU),
        (54, Action.CHECK_MECHANICALS),
        (45, Action.IGNORE),
    ],
)
def test_catalog_actions(code: int, action: Action) -> None:
    assert xid_info(code).action is action


def test_unknown_code_is_contact_support() -> None:
    assert xid_info(9999).action is Action.CONTACT_SUPPORT


def test_xid_154_reads_the_recovery_action_from_the_message() -> None:
    msg = "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"
    assert action_for(154, msg) is Action.RESTART_BM
    assert action_for(154, "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)") is (
        Action.RESET_GPU
    )
    assert action_for(154, "garbled") is Action.XID_154_EVAL


def test_syslog_current_form() -> None:
    line = (
        "Nov 23 19:30:00 hall-a-r00-k00-n0 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, "
        "GPU has fallen off the bus."
    )
    r = parse_xid_line(line, year=2024)
    assert r is not None
    assert (r.xid, r.pci_bus_id, r.pid, r.process, r.host, r.t_s) == (
        79, "0000:3b:00", 1234, "python3", "hall-a-r00-k00-n0", T_NOV23
    )  # fmt: skip
    assert r.message == "GPU has fallen off the bus."
    assert r.action is Action.RESTART_BM
    assert r.name == "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS"


def test_older_form_without_pci_and_pid_with_dmesg_uptime() -> None:
    r = parse_xid_line("[12345.678901] NVRM: Xid (0000:3b:00): 13, Graphics Exception: ESR 0x405840=0x1")
    assert r is not None
    assert (r.xid, r.pci_bus_id, r.pid, r.process, r.uptime_s, r.t_s) == (
        13, "0000:3b:00", None, None, 12345.678901, None
    )  # fmt: skip
    assert r.message == "Graphics Exception: ESR 0x405840=0x1"


@pytest.mark.parametrize(
    ("pid_text", "name_text"),
    [("'<unknown>'", "<unknown>"), ("'N/A'", "N/A"), ("N/A", "N/A"), ("<unknown>", "<unknown>")],
)
def test_quoted_and_unquoted_unknown_pid(pid_text: str, name_text: str) -> None:
    line = f"[ 99.5] NVRM: Xid (PCI:0000:cb:00): 13, pid={pid_text}, name={name_text}, Graphics SM Warp Exception"
    r = parse_xid_line(line)
    assert r is not None
    assert (r.xid, r.pid, r.process, r.message) == (13, None, None, "Graphics SM Warp Exception")


def test_quoted_numeric_pid() -> None:
    r = parse_xid_line("NVRM: Xid (PCI:0000:9a:00.0): 48, pid='1777', name=python, An uncorrectable double bit error")
    assert r is not None
    assert (r.pid, r.process, r.pci_bus_id, r.action) == (1777, "python", "0000:9a:00", Action.WORKFLOW_XID_48)


def test_mig_gpu_instance_in_the_prefix() -> None:
    line = "NVRM: Xid (PCI:0000:07:00 GPU-I:05): 94, pid=N/A, name=N/A, Contained: SM (0x1). RST: No, D-RST: No"
    r = parse_xid_line(line)
    assert r is not None
    assert (r.xid, r.gpu_instance, r.compute_instance, r.pci_bus_id) == (94, 5, None, "0000:07:00")
    r2 = parse_xid_line("NVRM: Xid (PCI:0000:07:00 GPU-I:01 GPU-CI:00): 13, pid=77, name=a.out, Graphics Exception")
    assert r2 is not None
    assert (r2.gpu_instance, r2.compute_instance, r2.pid) == (1, 0, 77)


def test_pid_without_name() -> None:
    line = (
        "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate."
    )
    r = parse_xid_line(line)
    assert r is not None
    assert (r.xid, r.pid, r.process) == (63, 1896, None)
    assert r.message.startswith("Row Remapper")


def test_dmesg_human_time() -> None:
    line = (
        "[Fri Aug 30 11:43:09 2024] NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, "
        "Graphics SM Warp Exception on (GPC 7, TPC 1, SM 0): Out Of Range Address"
    )
    r = parse_xid_line(line)
    assert r is not None
    assert r.t_s == calendar.timegm((2024, 8, 30, 11, 43, 9))
    assert r.message.endswith("Out Of Range Address")


def test_rfc5424_and_journal_prefixes() -> None:
    line = (
        '<3>1 2024-11-23T19:30:00.250Z hall-a-r00-k00-n1 kernel - - [meta seq="1"] NVRM: Xid (PCI:0000:c1:00): '
        "154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"
    )
    r = parse_xid_line(line)
    assert r is not None
    assert (r.host, r.t_s, r.xid, r.action) == ("hall-a-r00-k00-n1", T_NOV23 + 0.25, 154, Action.RESTART_BM)
    p = parse_prefix(line)
    assert (p.app, p.severity) == ("kernel", 3)
    j = parse_xid_line(
        "2024-11-23T19:30:00+0000 node7 kernel: NVRM: Xid (PCI:0000:3b:00): 31, pid=5, name=x, MMU Fault"
    )
    assert j is not None
    assert (j.host, j.t_s, j.xid) == ("node7", T_NOV23, 31)


def test_syslog_with_pri_and_inner_dmesg_stamp() -> None:
    line = "<4>Nov  3 01:02:03 h2 kernel: [ 3.1] NVRM: Xid (PCI:0000:10:1c): 74, pid=1, name=x, NVLink: fatal error"
    r = parse_xid_line(line, year=2024)
    assert r is not None
    assert (r.host, r.uptime_s, r.xid, r.t_s) == ("h2", 3.1, 74, calendar.timegm((2024, 11, 3, 1, 2, 3)))
    assert parse_prefix(line, 2024).severity == 4


def test_loghub_prefixes() -> None:
    tb = "- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 crond(pam_unix)[2915]: session closed for user root"
    p = parse_prefix(tb)
    assert (p.label, p.host, p.app, p.t_s, p.message) == (
        "-", "dn228", "crond(pam_unix)", 1131566461.0, "session closed for user root"
    )  # fmt: skip
    bgl = (
        "KERNDTLB 1118536327 2005.06.11 R30-M0-N9-C:J16-U01 2005-06-11-17.32.07.581048 R30-M0-N9-C:J16-U01 "
        "RAS KERNEL FATAL data TLB error interrupt"
    )
    b = parse_prefix(bgl)
    assert (b.label, b.host, b.severity, b.message) == (
        "KERNDTLB",
        "R30-M0-N9-C:J16-U01",
        2,
        "data TLB error interrupt",
    )


def test_non_xid_lines_are_skipped() -> None:
    lines = [
        "Nov 23 19:30:00 h kernel: NVRM: GPU at PCI:0000:3b:00: GPU-2ec1f24d-182b-50b3-a8f3-ea37f9237ba7",
        "Nov 23 19:30:00 h sshd[1]: Accepted publickey for root",
        "Nov 23 19:30:01 h kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=p, GPU has fallen off the bus.",
    ]
    out = parse_xid_lines(lines, 2024)
    assert [r.xid for r in out] == [79]


def test_render_round_trips() -> None:
    r = parse_xid_line(render_xid_line(95, "0000:18:00", pid=42, process="python3"))
    assert r is not None
    assert (r.xid, r.pci_bus_id, r.pid, r.process, r.action) == (95, "0000:18:00", 42, "python3", Action.RESET_GPU)


def test_normalize_pci() -> None:
    assert normalize_pci("00000000:3B:00.0") == "0000:3b:00"
    assert normalize_pci("3b:00") == "0000:3b:00"
    assert normalize_pci("PCI:0000:3b:00") == "0000:3b:00"
