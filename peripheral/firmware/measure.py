#!/usr/bin/env python3
"""Helpers of run.sh: what the QEMU plugin should watch, and the table.

  measure.py calls ELF                  call sites of the handshake's operations
                                        ("<call site> <return address> <op>", hex)
  measure.py collect NAME ELF OUT PLUGIN > NAME.json
                                        one build's sizes, stack and instructions
  measure.py table A.json B.json ...    the markdown table, one column per build
  measure.py budgets M4F.json           the DESIGN.md budgets, met or not (exit 1 if not)
  measure.py lockcheck LOCK WORKSPACE_LOCK
                                        every crate that both lock files hold is
                                        at a version the workspace uses (the
                                        firmware may add versions, e.g. of the
                                        build tools of cortex-m)

The firmware brackets each step with hs_mark() (STEP lines in OUT, MARK lines
from the plugin); the plugin also reports every call of the operations below
with its inclusive instruction count (CALL lines). vouch-proto keeps these
functions out of line (#[inline(never)]) so that they exist in the ELF.
"""
import json
import re
import subprocess
import sys

# Demangled function (generic arguments stripped) -> operation.
OPS = {
    "vouch_proto::crypto::keygen_peripheral": "keygen",
    "vouch_proto::handshake::peripheral::sign_hello": "sign",
    "vouch_proto::crypto::dh_peripheral": "dh",
    "vouch_proto::handshake::peripheral::seal_identity": "seal",
    "vouch_proto::handshake::peripheral::open_vouch": "open_vouch",
    "vouch_proto::handshake::peripheral::verify_vouch": "verify",
    "vouch_proto::handshake::schedule::session_secrets": "key_schedule",
    "vouch_proto::handshake::peripheral::queue_finish": "finish",
    "vouch_proto::handshake::schedule::binder": "binder",
    "vouch_proto::handshake::schedule::resume_confirm": "confirm",
}

# The rows of the table: (step, op, label). DH appears twice in the full
# handshake: the n-th call of an op in a phase takes the n-th row naming it.
FULL = [
    ("full.hello", "keygen", "X25519 key generation (e_P)"),
    ("full.hello", "sign", "Ed25519 signature (hello statement)"),
    ("full.hello", "dh", "X25519 with the backend key B_x"),
    ("full.hello", "seal", "seal identity (HKDF k_seal, ChaCha20)"),
    ("full.response", "dh", "X25519 with e_G"),
    ("full.response", "open_vouch", "open vouch (HKDF k_resp, ChaCha20, decode, G point check)"),
    ("full.response", "verify", "Ed25519 verification (vouch)"),
    ("full.response", "key_schedule", "key schedule (HKDF: keys, ticket, ids)"),
    ("full.response", "finish", "Finish (ChaCha20-Poly1305 tag)"),
]
RESUME = [
    ("resume.hello", "keygen", "X25519 key generation (e_P')"),
    ("resume.hello", "binder", "binder (HKDF, HMAC)"),
    ("resume.response", "dh", "X25519 with e_G'"),
    ("resume.response", "confirm", "confirm check (HKDF, HMAC)"),
    ("resume.response", "key_schedule", "key schedule (HKDF: keys, ticket, ids)"),
    ("resume.response", "finish", "Finish (ChaCha20-Poly1305 tag)"),
]
FULL_STEPS = ["full.hello", "full.response"]
RESUME_STEPS = ["resume.hello", "resume.response"]
SIGNATURE_OPS = {"sign", "verify"}

# DESIGN.md §6 on Cortex-M4 (issue 21): the goals.
BUDGET_INSNS = 4_500_000
BUDGET_RESUME_INSNS = 1_500_000
BUDGET_FLASH = 64 * 1024
BUDGET_STACK = 8 * 1024


def demangled_target(line):
    m = re.match(r"\s*([0-9a-f]+):\s+bl\s+[0-9a-f]+ <(.+)>\s*$", line)
    if not m:
        return None
    name = m.group(2)
    name = re.sub(r"::<.*>$", "", name)  # generic arguments
    name = re.sub(r"\.llvm\.\d+$", "", name)
    return int(m.group(1), 16), name


def cmd_calls(elf):
    dis = subprocess.run(
        ["arm-none-eabi-objdump", "-d", "-C", "--no-show-raw-insn", elf],
        check=True, capture_output=True, text=True,
    ).stdout
    found = set()
    for line in dis.splitlines():
        hit = demangled_target(line)
        if hit and hit[1] in OPS:
            addr, name = hit
            found.add(OPS[name])
            # A Thumb-2 BL is 4 bytes: the callee returns to the next one.
            print(f"{addr:x} {addr + 4:x} {OPS[name]}")
    missing = sorted(set(OPS.values()) - found)
    if missing:
        sys.stderr.write(f"measure.py: no call sites for {missing} (inlined?)\n")


def stack_top(elf):
    nm = subprocess.run(["arm-none-eabi-nm", elf], check=True, capture_output=True, text=True).stdout
    for line in nm.splitlines():
        p = line.split()
        if len(p) == 3 and p[2] == "_stack_start":
            return int(p[0], 16)
    sys.exit(f"measure.py: no _stack_start in {elf}")


def cmd_collect(name, elf, out_log, plugin_log):
    size = subprocess.run(
        ["arm-none-eabi-size", "-A", elf], check=True, capture_output=True, text=True
    ).stdout
    sections = {}
    for line in size.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash = sum(sections.get(s, 0) for s in (".vector_table", ".text", ".rodata", ".data"))
    ram = sum(sections.get(s, 0) for s in (".data", ".bss", ".uninit"))

    steps = []  # (name, stack, caller)
    result = None
    checks = {"passed": 0, "failed": 0}
    for line in open(out_log, errors="replace"):
        m = re.match(r"STEP (\S+) stack=(\d+) caller=(\d+)", line)
        if m:
            steps.append((m.group(1), int(m.group(2)), int(m.group(3))))
        m = re.match(r"CHECKS passed=(\d+) failed=(\d+)", line)
        if m:
            checks = {"passed": int(m.group(1)), "failed": int(m.group(2))}
        if line.startswith("RESULT "):
            result = line.split()[1]
    top = stack_top(elf)

    def depth(low_hex):
        low = int(low_hex, 16)
        return top - low if low else 0

    marks, calls, total = [], [], None
    for line in open(plugin_log, errors="replace"):
        p = line.split()
        if not p:
            continue
        if p[0] == "MARK":
            marks.append(int(p[2]))
        elif p[0] == "CALL":
            calls.append((p[1], int(p[2]), int(p[3]), int(p[4]), depth(p[5])))
        elif p[0] == "TOTAL":
            total = int(p[1])
    if len(marks) != 2 * len(steps):
        sys.exit(f"measure.py: {len(marks)} marks for {len(steps)} steps in {plugin_log}")

    step_data = {}
    for i, (sname, stack, caller) in enumerate(steps):
        begin, end = marks[2 * i], marks[2 * i + 1]
        ops = [
            (op, b, e, st)
            for (op, nested, b, e, st) in calls
            if nested == 0 and begin <= b and e <= end
        ]
        step_data[sname] = {
            "insns": end - begin,
            "stack": stack,
            "caller": caller,
            # [op, instructions, deepest stack during it, from the top]
            "ops": [[op, e - b, st] for (op, b, e, st) in ops],
        }
    json.dump(
        {
            "name": name,
            "flash": flash,
            "ram": ram,
            "sections": sections,
            "result": result,
            "checks": checks,
            "steps": step_data,
            "total_insns": total,
        },
        sys.stdout,
        indent=1,
    )
    print()


def phase(build, rows, step_names):
    """Per-row instruction counts of one phase, 'other', total, signature ops."""
    values = {}
    used = {s: [] for s in step_names}
    for i, (step, op, _) in enumerate(rows):
        calls = [c for c in build["steps"].get(step, {}).get("ops", []) if c[0] == op]
        nth = sum(1 for (s, o, _) in rows[:i] if s == step and o == op)
        if nth < len(calls):
            values[i] = calls[nth][1]
            used[step].append(calls[nth][1])
    total = sum(build["steps"].get(s, {}).get("insns", 0) for s in step_names)
    attributed = sum(sum(v) for v in used.values())
    sig = sum(
        1
        for s in step_names
        for c in build["steps"].get(s, {}).get("ops", [])
        if c[0] in SIGNATURE_OPS
    )
    return values, total - attributed, total, sig


def fmt(n):
    return f"{n:,}" if isinstance(n, int) else str(n)


def cmd_table(paths):
    builds = [json.load(open(p)) for p in paths]
    head = "| | " + " | ".join(b["name"] for b in builds) + " | budget (DESIGN.md §6) |"
    out = [head, "|---" * (len(builds) + 2) + "|"]

    def row(label, cells, budget=""):
        out.append(f"| {label} | " + " | ".join(cells) + f" | {budget} |")

    row("flash: text + rodata + data (bytes)", [fmt(b["flash"]) for b in builds], "≤ 65,536 (64 KiB)")
    row("static RAM: data + bss (bytes)", [fmt(b["ram"]) for b in builds], "")

    def peak(b, steps):
        return max(b["steps"][s]["stack"] for s in steps if s in b["steps"])

    def own(b, steps):
        return max(b["steps"][s]["stack"] - b["steps"][s]["caller"] for s in steps if s in b["steps"])

    row("peak stack of the handshake, from the top (bytes)", [fmt(peak(b, FULL_STEPS + RESUME_STEPS)) for b in builds], "≤ 8,192 (8 KiB)")
    row("… of which below the vouch-proto call (bytes)", [fmt(own(b, FULL_STEPS + RESUME_STEPS)) for b in builds], "")

    def deepest(b):
        ops = [(c[2], c[0]) for s in FULL_STEPS + RESUME_STEPS for c in b["steps"].get(s, {}).get("ops", []) if len(c) > 2]
        st, op = max(ops) if ops else (0, "–")
        return f"{op} ({st:,})"

    row("deepest operation (its peak, from the top)", [deepest(b) for b in builds], "")
    row("**full handshake (instructions)**", [f"**{fmt(phase(b, FULL, FULL_STEPS)[2])}**" for b in builds], "≤ 4,500,000 on Cortex-M4")
    per = [phase(b, FULL, FULL_STEPS) for b in builds]
    for i, (_, _, label) in enumerate(FULL):
        row("&nbsp;&nbsp;" + label, [fmt(p[0].get(i, "–")) for p in per])
    row("&nbsp;&nbsp;other: encode/decode, transcript hash, state", [fmt(p[1]) for p in per])
    row("**resumption (instructions)**", [f"**{fmt(phase(b, RESUME, RESUME_STEPS)[2])}**" for b in builds], "≤ 1,500,000, no signature")
    per = [phase(b, RESUME, RESUME_STEPS) for b in builds]
    for i, (_, _, label) in enumerate(RESUME):
        row("&nbsp;&nbsp;" + label, [fmt(p[0].get(i, "–")) for p in per])
    row("&nbsp;&nbsp;other: encode/decode, transcript hash, state", [fmt(p[1]) for p in per])
    row("&nbsp;&nbsp;signature operations in the resumption", [fmt(p[3]) for p in per], "0")
    boot = [b["steps"].get("boot.identity_key", {}).get("insns", "–") for b in builds]
    row("boot, once: identity key from seed (instructions)", [fmt(x) for x in boot])
    row("checks against the vectors", [f'{b["checks"]["passed"]} ok, {b["checks"]["failed"]} failed' for b in builds])
    print("\n".join(out))
    print()
    print("Instruction counts are exact guest instructions (QEMU TCG plugin), not cycles.")


def cmd_budgets(path):
    """The DESIGN.md budgets, met or not; exit 1 when one is exceeded
    (BUDGETS=enforce in run.sh fails the run then). Instruction counts are
    exact and deterministic (QEMU's TCG plugin), not timings."""
    b = json.load(open(path))
    full = phase(b, FULL, FULL_STEPS)
    resume = phase(b, RESUME, RESUME_STEPS)
    stack = max(b["steps"][s]["stack"] for s in FULL_STEPS + RESUME_STEPS)
    # label, value, DESIGN.md budget, unit
    verdicts = [
        ("flash (text + rodata + data)", b["flash"], BUDGET_FLASH, "bytes"),
        ("peak stack of the handshake", stack, BUDGET_STACK, "bytes"),
        ("full handshake", full[2], BUDGET_INSNS, "instructions"),
        ("resumption", resume[2], BUDGET_RESUME_INSNS, "instructions"),
        ("signature operations in a resumption", resume[3], 0, ""),
    ]
    good = True
    print(f"DESIGN.md budgets, {b['name']}:")
    for label, value, budget, unit in verdicts:
        met = value <= budget
        good &= met
        print(f"  {'within' if met else 'OVER  '} {label}: {value:,} (budget {budget:,}) {unit}")
    sys.exit(0 if good else 1)


def cmd_lockcheck(lock, workspace_lock):
    import tomllib

    def versions(path):
        out = {}
        with open(path, "rb") as f:
            for p in tomllib.load(f).get("package", []):
                out.setdefault(p["name"], set()).add(p["version"])
        return out

    ours, theirs = versions(lock), versions(workspace_lock)
    bad = [
        f"  {name}: {', '.join(sorted(v))} here, {', '.join(sorted(theirs[name]))} in the workspace"
        for name, v in sorted(ours.items())
        if name in theirs and not v & theirs[name]
    ]
    if bad:
        print("Cargo.lock and the workspace's lock disagree (copy ../../Cargo.lock here and build):")
        print("\n".join(bad))
        sys.exit(1)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "calls":
        cmd_calls(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "collect":
        cmd_collect(*sys.argv[2:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "table":
        cmd_table(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "budgets":
        cmd_budgets(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "lockcheck":
        cmd_lockcheck(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
