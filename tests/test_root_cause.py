"""One root cause per problem, and never a contradicted one.

Where two or three causes coexist, the diagnosis that explains the others ranks first, a
diagnosis it fully explains is folded under it as a consequence (and leaves the fix plan), and
the plan's first step addresses the root cause; a playbook whose premise a finding contradicts
("the CPU and the firmware allow KVM" beside a failing KVM004) does not fire at all.

Hosts are the lab's recorded snapshot with the answers that differ replaced (tests/kdhosts.py),
using real captured text: a Hyper-V guest's /proc/cpuinfo and Hyper-V's DMI strings (virt-what's
test data, systemd issue 21816), the kernel's own refusal of kvm_intel in a guest without VT-x
(LKML). The engine's rules themselves are tested last, on small playbooks of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from doctor import playbooks, remedy, rules
from doctor.cli import app
from doctor.model import Finding, Ignore, Status

from kdhosts import (
    daemon_stopped,
    hyperv_guest_without_vtx,
    intel_bare_metal,
    kvm_probe_refused,
    listens_for_tls_without_files,
    no_kvm_device,
)
from kdsnap import EditableSnapshot, realdata
from kdtest import ROOT

# The kernel refusing kvm_intel in a guest whose CPU model has no VMX (a real boot, LKML).
VMX_REFUSED = (
    "kernel-log/lkml-rrichter__dmesg__qemu-q35-guest_kvm_intel-VMX-not-supported_"
    "kvm_amd-svm-not-available.txt"
)
MODULE_PLAYBOOKS = {"kvm-missing-module-not-loaded", "kvm-module-not-loaded"}


def run_json(path: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["run", "--snapshot", str(path), "-f", "json", *args])
    assert result.exit_code in (0, 1), result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def run_text(path: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["run", "--snapshot", str(path), *args])
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def shell_plan(path: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["fix", "--snapshot", str(path), "-f", "shell", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def ids(report: dict[str, Any]) -> list[str]:
    return [d["playbook"] for d in report["diagnoses"]]


def roots(report: dict[str, Any]) -> list[str]:
    return [d["playbook"] for d in report["diagnoses"] if "consequence_of" not in d]


def codes(refs: list[dict[str, Any]]) -> set[str]:
    return {ref["code"] for ref in refs}


def validate(report: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(report)]
    assert errors == []


def commands(script: str) -> list[str]:
    """The lines of a shell plan that run (not comments, not the helper's body)."""
    body = script.split("\n}\n", 1)[1]
    return [line for line in body.splitlines() if line.strip() and not line.startswith("#")]


# --- the Hyper-V guest a new user met -------------------------------------------------------


OUTER = "kvm-missing-nested-not-exposed"  # /dev/kvm missing, the outer hypervisor the cause


@pytest.mark.parametrize(
    ("dmi", "hypervisor_flag"),
    [
        ("hyperv_guest_2008", False),
        ("hyperv_guest_2008", True),
        ("hyperv_guest_debian9_sysfs", True),
    ],
)
def test_a_hyperv_guest_without_vtx_is_the_outer_hypervisors_problem_not_the_modules(
    edit_snapshot: Any, dmi: str, hypervisor_flag: bool
) -> None:
    """cpuinfo without vmx, DMI "Microsoft Corporation"/"Virtual Machine", no kvm module, no
    /dev/kvm: the first diagnosis is the outer hypervisor, which explains KVM001, KVM005 and
    KVM006; "the CPU and the firmware allow KVM, but kvm_intel is not loaded" does not fire,
    and the plan has no `modprobe kvm_intel`."""
    path = hyperv_guest_without_vtx(edit_snapshot(), dmi, hypervisor_flag).save()
    report = run_json(path)
    validate(report)

    first = report["diagnoses"][0]
    # /dev/kvm is missing and KVM001 names the outer hypervisor as the cause: the diagnosis
    # for exactly that, resting on KVM001 and KVM004, explaining the modules and usability.
    assert first["playbook"] == OUTER, ids(report)
    assert codes(first["findings"]) == {"KVM001", "KVM004"}
    assert codes(first["explains"]) >= {"KVM005", "KVM006"}
    assert "Microsoft Hyper-V" in first["cause"]
    assert "ExposeVirtualizationExtensions" in first["fix"][0]["text"]
    assert not MODULE_PLAYBOOKS & set(ids(report))
    kvm = [
        f
        for c in report["checks"]
        if c["code"] in ("KVM001", "KVM005", "KVM006")
        for f in c["findings"]
    ]
    assert all(OUTER in f["explained_by"] for f in kvm), kvm
    # and the findings themselves no longer advise modprobe
    assert not [f for f in kvm if "modprobe" in f["message"]], kvm

    plan = remedy.plan_from_report(report)
    assert plan[0].playbook == OUTER
    assert not [
        s for item in plan for s in item.steps if s.params.get("module") in ("kvm_intel", "kvm")
    ]
    script = shell_plan(path)
    assert not [line for line in commands(script) if "kvm_intel" in line], script
    text = run_text(path)
    assert text.split("Diagnoses\n", 1)[1].startswith(
        "FAIL  /dev/kvm is missing because the outer hypervisor does not pass VT-x/AMD-V "
        f"through ({OUTER})"
    )


def test_on_bare_metal_the_module_is_the_cause_and_modprobe_leads_the_plan(
    edit_snapshot: Any,
) -> None:
    """The premises rule out the module playbooks only where they are contradicted: on an
    Intel host with VT-x and kvm_intel not loaded, they still name the cause and fix it."""
    path = intel_bare_metal(no_kvm_device(edit_snapshot()), "[    0.000000] Linux version 6.1.0\n")
    report = run_json(path.save(), "--select", "KVM")
    assert roots(report)[0] == "kvm-missing-module-not-loaded", ids(report)
    step = remedy.plan_from_report(report)[0].steps[0]
    assert (step.action, step.safety, step.params["module"]) == (
        "module_option",
        "safe",
        "kvm_intel",
    )


# --- two or three causes at once -------------------------------------------------------------


def hyperv_static_node_refused_module(snap: EditableSnapshot) -> EditableSnapshot:
    """The Hyper-V guest with three problems: the outer hypervisor withholds VT-x; someone ran
    `modprobe kvm_intel` and the kernel refused it; /dev/kvm is the static node kmod creates at
    boot (crw------- root root, no udev rule), which opens with ENODEV as no module can serve
    it, and which the qemu.conf user and its running QEMU may not open anyway."""
    snap = hyperv_guest_without_vtx(snap, "hyperv_guest_debian9_sysfs", hypervisor_flag=True)
    snap.set_stat("/dev/kvm", type="char", mode=0o600, uid=0, gid=0, rdev="10:232")
    snap.set_value(
        "kvm_probe",
        kvm_probe_refused("ENODEV"),
        path="/dev/kvm",
    )
    return snap.set_file("/var/log/kern.log", realdata(VMX_REFUSED))


def test_outer_hypervisor_module_and_permissions_rank_the_hypervisor_first_and_fold_the_module(
    edit_snapshot: Any,
) -> None:
    path = hyperv_static_node_refused_module(edit_snapshot()).save()
    report = run_json(path)
    validate(report)
    diagnoses = report["diagnoses"]

    # The order: the outer hypervisor (KVM004, explaining KVM005 and KVM006), then the
    # permissions (KVM002 for the qemu.conf user and its process), then the rest.
    assert roots(report)[:3] == [
        "nested-virt-not-exposed",
        "kvm-device-root-only",
        "kvm-device-root-only",
    ], ids(report)
    assert not MODULE_PLAYBOOKS & set(ids(report))
    # The folding: "the backend module refuses to load" is what the outer hypervisor causes.
    (refused,) = [d for d in diagnoses if d["playbook"] == "kvm-backend-refused-to-load"]
    assert refused["consequence_of"] == 1 and refused["rank"] > len(roots(report))
    assert diagnoses[0]["consequences"] == [refused["rank"]]
    assert codes(refused["findings"]) | codes(refused["explains"]) <= codes(
        diagnoses[0]["findings"]
    ) | codes(diagnoses[0]["explains"])

    # The plan: the outer hypervisor's step first, the permissions after it, no step of the
    # folded diagnosis.
    plan = remedy.plan_from_report(report)
    assert [item.playbook for item in plan][:2] == [
        "nested-virt-not-exposed",
        "kvm-device-root-only",
    ]
    assert "Set-VMProcessor" in plan[0].steps[0].text
    assert "kvm-backend-refused-to-load" not in [item.playbook for item in plan]

    # The text report shows the consequence under its cause, not as a problem of its own.
    text = run_text(path)
    block = text.split("Diagnoses\n", 1)[1].split("\nFAIL  ", 1)[0]
    assert block.startswith("FAIL  The outer hypervisor does not pass VT-x/AMD-V through")
    assert (
        "      consequence: FAIL The KVM backend module refuses to load "
        "(kvm-backend-refused-to-load)" in block
    )
    assert text.count("The KVM backend module refuses to load") == 1


def test_daemon_stopped_socket_missing_and_tls_lead_with_the_tls_files(
    edit_snapshot: Any,
) -> None:
    """libvirtd set to --listen without any TLS file, not running, its socket gone and
    virtlogd's socket gone too: "start libvirtd" cannot work (it exits at start-up without its
    CA), so the plan starts with the TLS files, and the stopped daemon's own playbook, whose
    premise is that starting it works, does not fire."""
    snap = listens_for_tls_without_files(daemon_stopped(edit_snapshot()))
    path = snap.missing("stat", path="/run/libvirt/virtlogd-sock").save()
    report = run_json(path)
    validate(report)

    assert roots(report)[:2] == ["libvirtd-tls-blocks-start", "tls-cert-or-key-missing"], ids(
        report
    )
    assert "libvirtd-not-running" not in ids(report)
    first = report["diagnoses"][0]
    assert codes(first["findings"]) == {"LIB001", "TLS001"}
    assert codes(first["explains"]) == {"LIB002", "LIB003"}
    assert "/etc/pki/CA/cacert.pem" in first["cause"]
    # virtlogd's socket is not a problem of its own: libvirtd starts virtlogd when it runs.
    assert "virtlogd-not-running" not in ids(report)

    plan = remedy.plan_from_report(report)
    assert plan[0].playbook == "libvirtd-tls-blocks-start"
    assert "/etc/pki/CA/cacert.pem" in plan[0].steps[0].text
    starts = [i for i, item in enumerate(plan) for s in item.steps if s.action == "service"]
    assert 0 not in starts


def test_the_tls_uri_that_explains_more_ranks_before_a_more_severe_cause(
    edit_snapshot: Any,
) -> None:
    """Causal depth before severity: a qemu://host/system URI (a warning) explains the missing
    client CA and certificate (failures), so it comes before virtlogd not running (a failure
    that explains nothing else), and the certificate diagnosis is folded under it."""
    path = edit_snapshot().missing("stat", path="/run/libvirt/virtlogd-sock").save()
    report = run_json(path, "--uri", "qemu://kvm1.example/system")
    validate(report)

    assert roots(report)[:2] == ["uri-implies-tls", "virtlogd-not-running"], ids(report)
    uri, virtlogd = report["diagnoses"][:2]
    assert (uri["status"], virtlogd["status"]) == ("warn", "fail")
    (cert,) = [d for d in report["diagnoses"] if d["playbook"] == "tls-cert-or-key-missing"]
    assert cert["consequence_of"] == uri["rank"] == 1
    plan = [item.playbook for item in remedy.plan_from_report(report)]
    assert plan[:2] == ["uri-implies-tls", "virtlogd-not-running"]
    assert "tls-cert-or-key-missing" not in plan


# --- the engine's rules, on playbooks of their own --------------------------------------------


def write_book(directory: Path, **texts: str) -> playbooks.Playbooks:
    for name, text in texts.items():
        (directory / f"{name}.yaml").write_text(text)
    return playbooks.load(directory)


def playbook(
    id: str,
    when: str,
    explains: str = "[]",
    safety: str = "safe",
) -> str:
    return (
        f"id: {id}\ntitle: {id}\nwhen:\n{when}explains: {explains}\ncause: '{{message}}.'\n"
        f"fix:\n  - action: manual\n    safety: {safety}\n    text: fix {id}\nverify: [KVM006]\n"
    )


def finding(
    code: str, status: Status, subject: str = "host", ignored: Optional[Ignore] = None
) -> Finding:
    return Finding(status, f"{code} {status} {subject}", subject, {}, code, ignored)


PREMISED = playbook(
    "kd-premised",
    "  all:\n    - code: KVM002\n    - not: {code: KVM004, status: fail}\n",
)


@pytest.mark.parametrize(
    ("contradiction", "fires"),
    [
        (None, True),
        (finding("KVM004", "fail", "user:alice"), False),  # about the anchor's subject
        (finding("KVM004", "fail"), False),  # about the host
        (finding("KVM004", "fail", "user:bob"), True),  # about another subject
        (finding("KVM004", "warn", "user:alice"), True),  # a status the premise allows
        (finding("KVM004", "fail", "user:alice", Ignore("ci", "waived")), True),  # ignored
    ],
)
def test_a_premise_is_contradicted_by_a_finding_about_the_anchor_or_the_host(
    tmp_path: Path, contradiction: Optional[Finding], fires: bool
) -> None:
    book = write_book(tmp_path, **{"kd-premised": PREMISED})
    assert book.errors == []
    found = [finding("KVM002", "fail", "user:alice")]
    if contradiction is not None:
        found.append(contradiction)
    diagnoses, _ = rules.diagnose(found, book)
    assert [d.playbook.id for d in diagnoses] == (["kd-premised"] if fires else [])


def test_a_host_wide_anchor_is_contradicted_by_any_subject_and_a_subject_test_by_any_anchor(
    tmp_path: Path,
) -> None:
    book = write_book(
        tmp_path,
        **{
            "kd-host": playbook(
                "kd-host", "  all:\n    - code: KVM001\n    - not: {code: KVM002}\n"
            ),
            "kd-socket": playbook(
                "kd-socket",
                "  all:\n    - code: LIB001\n"
                "    - not: {code: TLS001, status: fail, subject: '^tls:server$'}\n",
            ),
        },
    )
    assert book.errors == []
    user = finding("KVM002", "fail", "user:alice")
    diagnoses, _ = rules.diagnose([finding("KVM001", "fail"), user], book)
    assert diagnoses == []
    lib = finding("LIB001", "fail", "socket:/run/libvirt/libvirt-sock")
    server = finding("TLS001", "fail", "tls:server")
    client = finding("TLS001", "fail", "tls:client")
    assert rules.diagnose([lib, server], book)[0] == []
    assert [d.playbook.id for d in rules.diagnose([lib, client], book)[0]] == ["kd-socket"]


@pytest.mark.parametrize(
    ("when", "error"),
    [
        ("  all:\n    - not: {code: KVM004}\n    - code: KVM001\n", "when/all/0"),
        ("  any:\n    - code: KVM001\n    - not: {code: KVM004}\n", "when/any/1"),
        (
            "  all:\n    - code: KVM001\n    - code: KVM004\n      status: fail\n"
            "    - not: {code: KVM004}\n",
            "could never fire",
        ),
    ],
)
def test_a_misplaced_or_self_defeating_premise_is_a_load_error(
    tmp_path: Path, when: str, error: str
) -> None:
    book = write_book(tmp_path, **{"kd-bad": playbook("kd-bad", when)})
    assert len(book) == 0
    (problem,) = book.errors
    assert error in problem.message, problem.message


def test_a_premise_with_a_test_of_its_own_may_share_a_required_code(tmp_path: Path) -> None:
    """`not` on the same code as a condition is fine when a test tells the findings apart."""
    book = write_book(
        tmp_path,
        **{
            "kd-narrow": playbook(
                "kd-narrow",
                "  all:\n    - code: KVM002\n    - not: {code: KVM002, subject: '^process:'}\n",
            )
        },
    )
    assert book.errors == []
    assert book.items["kd-narrow"].contradicted_by[0].subject == "^process:"


CHAIN = {
    # kd-deep explains KVM005 and KVM006; kd-middle, more specific, is accepted first (its
    # anchor is no one's yet) and explains KVM006; kd-other and kd-severe stand alone.
    "kd-deep": playbook(
        "kd-deep", "  all:\n    - code: KVM004\n", "[KVM001, KVM005, KVM006]", "needs-reboot"
    ),
    "kd-middle": playbook(
        "kd-middle", "  all:\n    - code: KVM005\n      message: fail\n", "[KVM006]"
    ),
    "kd-other": playbook("kd-other", "  all:\n    - code: KVM002\n      message: warn\n"),
    "kd-severe": playbook("kd-severe", "  all:\n    - code: KVM008\n"),
}


def test_causal_depth_ranks_before_severity_and_consequences_fold_under_the_root(
    tmp_path: Path,
) -> None:
    book = write_book(tmp_path, **CHAIN)
    found = [
        finding("KVM004", "warn"),
        finding("KVM005", "fail"),
        finding("KVM006", "fail"),
        finding("KVM002", "warn", "user:alice"),
        finding("KVM008", "fail", "device:/dev/net/tun"),
    ]
    diagnoses, marked = rules.diagnose(found, book)
    order = [(d.playbook.id, d.consequence_of, d.consequences) for d in diagnoses]
    assert order == [
        ("kd-deep", None, (4,)),  # a warning explaining three problems
        ("kd-severe", None, ()),  # a failure: severity before specificity
        ("kd-other", None, ()),  # a warning, more specific
        ("kd-middle", 1, ()),  # all it rests on and explains, kd-deep explains
    ]
    data = [d.as_dict(rank) for rank, d in enumerate(diagnoses, start=1)]
    assert data[0]["consequences"] == [4] and "consequence_of" not in data[0]
    assert data[3]["consequence_of"] == 1 and "consequences" not in data[3]
    assert marked[1].explained_by == ("kd-middle", "kd-deep")
    plan = remedy.plan_from_report({"diagnoses": data})
    assert [item.playbook for item in plan] == ["kd-deep", "kd-severe", "kd-other"]
