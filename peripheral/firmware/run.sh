#!/usr/bin/env bash
# Vouch on a microcontroller (issue 11; see README.md here).
#
# Builds peripheral/firmware for Cortex-M4F (thumbv7em-none-eabihf) and
# Cortex-M33 (thumbv8m.main-none-eabihf) with Debian's rustc-web and
# -Zbuild-std=core, runs each on qemu-system-arm (mps2-an386, mps2-an505), and
# prints flash, static RAM, peak stack and exact instruction counts next to the
# DESIGN.md budget. Exits 1, with a last line "N passed, M failed", when the
# firmware does not build, does not run, or produces other bytes or keys than
# SPEC.md §12.
#
#   MATRIX=ci      (default) the shipped configuration (the Cortex-M provider)
#                  on M4F and M33, and the dalek crates on M4F with and
#                  without their precomputed tables (the previous shipped
#                  configuration and the smallest one)
#   MATRIX=full    also the other configurations compared in README.md
#   BUDGETS=enforce  also fail when the shipped M4F build misses a DESIGN.md
#                  budget (measure.py budgets: flash, stack, instructions of
#                  the full handshake and of the resumption, no signature in
#                  a resumption)
#   CARGO_TARGET_DIR_MCU  target directory (default /var/cache/vouch-target-mcu)
set -uo pipefail
cd "$(dirname "$0")" || exit 1
MATRIX=${MATRIX:-ci}
TARGET_DIR=${CARGO_TARGET_DIR_MCU:-/var/cache/vouch-target-mcu}
OUT=${OUT:-$TARGET_DIR/run}
start=$(date +%s)
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }
finish() {
    echo "run.sh: $(( $(date +%s) - start )) s"
    echo "$passed passed, $failed failed"
    if [ "$failed" = 0 ]; then exit 0; else exit 1; fi
}

# --- 1. Debian packages (idempotent; rustup's toolchains are not used) -------
PKGS="rustc-web cargo-web rust-web-src lld binutils-arm-none-eabi qemu-system-arm gcc libc6-dev python3"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || printf '%s ' "$p"; done)
if [ -n "$missing" ]; then
    echo "installing:" "$missing"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # one word per package
    if ! { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends $missing; }; then
        bad "apt-get install $missing"
        finish
    fi
fi
# Debian's cargo and rustc (1.96, /usr/bin) ahead of rustup's proxies; nothing
# from the caller's environment changes what is built.
export PATH="/usr/bin:/bin:$PATH" RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo
export RUSTC_BOOTSTRAP=1 # -Zbuild-std on the stable compiler
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET RUSTUP_TOOLCHAIN
for v in $(env | sed -n 's/^\(CARGO_PROFILE_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done
if [ ! -d /usr/lib/rustlib/src/rust/library/core ]; then
    bad "rust-web-src: no /usr/lib/rustlib/src/rust/library/core"
    finish
fi
echo "toolchain: $(rustc --version), $(cargo --version), $(qemu-system-arm --version | head -1)"
mkdir -p "$OUT"

# --- 2. the vectors are the workspace's ------------------------------------
if python3 gen_vectors.py "$OUT/vectors.rs" && cmp -s "$OUT/vectors.rs" src/vectors.rs; then
    ok "src/vectors.rs is proto/tests/vectors/v1.json"
else
    bad "src/vectors.rs differs from proto/tests/vectors/v1.json: run ./gen_vectors.py"
fi

# --- 2b. the assembly is its generator's ------------------------------------
if python3 ../../proto/src/provider/cortex_m/gen_arm.py >"$OUT/arm.rs" &&
    cmp -s "$OUT/arm.rs" ../../proto/src/provider/cortex_m/arm.rs; then
    ok "proto/src/provider/cortex_m/arm.rs is gen_arm.py's output"
else
    bad "proto/src/provider/cortex_m/arm.rs differs from gen_arm.py's output"
fi

# --- 3. the QEMU plugin -----------------------------------------------------
if ! gcc -O2 -Wall -shared -fPIC -o "$OUT/libinsncount.so" qemu-plugin/insncount.c; then
    bad "building the QEMU plugin"
    finish
fi

# --- 4. build, run, check, measure ----------------------------------------
M4=thumbv7em-none-eabihf
M33=thumbv8m.main-none-eabihf
C3=(--config 'profile.release.package.curve25519-dalek.opt-level=3')
# name | target | cargo arguments | environment (opt-level, rustflags)
DALEK=(--no-default-features --features fast)
builds=(
    "m4f|$M4||"
    "m33|$M33||"
    "m4f-dalek|$M4|${DALEK[*]}|"
    "m4f-dalek-no-tables|$M4|--no-default-features|"
)
if [ "$MATRIX" = full ]; then
    builds+=(
        "m4f-opt-s|$M4||CARGO_PROFILE_RELEASE_OPT_LEVEL=s"
        "m4f-opt-3|$M4||CARGO_PROFILE_RELEASE_OPT_LEVEL=3"
        "m4f-unrolled-sha2|$M4||UNROLLED=1"
        "m4f-dalek-no-tables-curve-o3|$M4|--no-default-features ${C3[*]}|"
        "m4f-dalek-curve-o3|$M4|${DALEK[*]} ${C3[*]}|"
        "m4f-dalek-opt-s|$M4|${DALEK[*]}|CARGO_PROFILE_RELEASE_OPT_LEVEL=s"
        "m4f-dalek-opt-3|$M4|${DALEK[*]}|CARGO_PROFILE_RELEASE_OPT_LEVEL=3"
        "m4f-dalek-unrolled-sha2|$M4|${DALEK[*]}|UNROLLED=1"
        "m4f-dalek-no-tables-unrolled-sha2|$M4|--no-default-features|UNROLLED=1"
    )
fi

machine() {
    case "$1" in
        thumbv7em-*) echo "-M mps2-an386 -cpu cortex-m4" ;;
        thumbv8m.main-*) echo "-M mps2-an505 -cpu cortex-m33" ;;
    esac
}
symbol() { arm-none-eabi-nm "$1" | awk -v s="$2" '$3 == s { print "0x" $1 }'; }

# Not --locked: when the workspace changes the features of a dependency
# vouch-proto shares (a new edge in the lock), cargo updates Cargo.lock here
# instead of failing, and keeps every version it pins; the version check
# after the builds holds the shared crates to the workspace's versions.
lock_before=$(sha256sum Cargo.lock)
jsons=()
for b in "${builds[@]}"; do
    IFS='|' read -r name target args envs <<<"$b"
    t0=$(date +%s)
    # Different rustflags would rebuild every crate each time: their own directory.
    td=$TARGET_DIR
    env_args=()
    for e in $envs; do
        case "$e" in
            UNROLLED=1)
                # RUSTFLAGS replaces .cargo/config.toml's rustflags: the same
                # link arguments, without the compact SHA-2 backend.
                td=$TARGET_DIR/unrolled-sha2
                env_args+=("RUSTFLAGS=-C linker-flavor=ld.lld -C link-arg=-Tlink.x")
                ;;
            *) env_args+=("$e") ;;
        esac
    done
    # shellcheck disable=SC2086 # $args are separate cargo arguments
    if ! env "${env_args[@]}" CARGO_TARGET_DIR="$td" cargo build -q --release \
        --target "$target" -Zbuild-std=core $args; then
        bad "$name: build"
        continue
    fi
    elf=$OUT/$name.elf
    cp "$td/$target/release/vouch-firmware" "$elf"
    if arm-none-eabi-nm "$elf" | grep -Eq '__rust_(alloc|dealloc|realloc)|__rdl_alloc|__rg_alloc'; then
        bad "$name: the ELF has an allocator"
        continue
    fi
    python3 measure.py calls "$elf" >"$OUT/$name.calls"
    plugin="$OUT/libinsncount.so,mark=$(symbol "$elf" hs_mark),calls=$OUT/$name.calls"
    plugin+=",stack=$(symbol "$elf" _stack_end):$(symbol "$elf" _stack_start)"
    # shellcheck disable=SC2046 # machine and CPU are separate arguments
    timeout 120 qemu-system-arm $(machine "$target") -nographic -monitor none -serial none \
        -semihosting-config enable=on,target=native -plugin "$plugin" -d plugin \
        -D "$OUT/$name.plugin" -kernel "$elf" >"$OUT/$name.log" 2>&1
    rc=$?
    grep -E '^(CHECK .*FAIL|FATAL)' "$OUT/$name.log"
    if [ $rc != 0 ] || ! grep -q '^RESULT PASS' "$OUT/$name.log"; then
        bad "$name: the run on $(machine "$target") (exit $rc; $OUT/$name.log)"
        continue
    fi
    if ! python3 measure.py collect "$name" "$elf" "$OUT/$name.log" "$OUT/$name.plugin" >"$OUT/$name.json"; then
        bad "$name: reading the measurements"
        continue
    fi
    jsons+=("$OUT/$name.json")
    ok "$name: built and ran in $(( $(date +%s) - t0 )) s; every message and key equals SPEC.md §12 ($(grep -c '^CHECK .* ok' "$OUT/$name.log") checks)"
    # The Cortex-M provider's builds (the default features): its assembly
    # multiplication against the Rust code, limb for limb, and its
    # registers and stack pointer given back (src/bin/field_check.rs).
    case " $args " in *" --no-default-features "*) continue ;; esac
    check_elf=$td/$target/release/field-check
    # shellcheck disable=SC2046 # machine and CPU are separate arguments
    timeout 120 qemu-system-arm $(machine "$target") -nographic -monitor none -serial none \
        -semihosting-config enable=on,target=native -kernel "$check_elf" >"$OUT/$name.field.log" 2>&1
    rc=$?
    if [ $rc = 0 ] && grep -q '^RESULT PASS' "$OUT/$name.field.log"; then
        ok "$name: the assembly field multiplication equals the Rust code ($(sed -n 's/^FIELD compared \([0-9]*\) .*/\1/p' "$OUT/$name.field.log") products and squares) and gives back r4-r11 and sp"
    else
        bad "$name: field-check (exit $rc): $(grep -E '^(ABI|FIELD|RESULT)' "$OUT/$name.field.log" | tr '\n' ' ')"
    fi
done

if python3 measure.py lockcheck Cargo.lock ../../Cargo.lock; then
    ok "Cargo.lock: every crate shared with the workspace has the workspace's version"
else
    bad "Cargo.lock differs from the workspace's (see above)"
fi
if [ "$(sha256sum Cargo.lock)" != "$lock_before" ]; then
    echo "note: cargo updated peripheral/firmware/Cargo.lock (the workspace's dependencies changed): commit it"
fi

# --- 5. the table -----------------------------------------------------------
if [ ${#jsons[@]} -gt 0 ]; then
    echo
    python3 measure.py table "${jsons[@]}"
    if [ -f "$OUT/m4f.json" ]; then
        echo
        if python3 measure.py budgets "$OUT/m4f.json"; then
            [ "${BUDGETS:-}" = enforce ] && ok "m4f: within every DESIGN.md budget (flash, stack, instructions of the full handshake and the resumption, no signature in a resumption)"
        elif [ "${BUDGETS:-}" = enforce ]; then
            bad "m4f: over a DESIGN.md budget"
        fi
    fi
fi
finish
