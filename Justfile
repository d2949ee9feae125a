# Task catalogue. CI and the README's two commands go through these
# recipes (`./dev RECIPE` installs the dependencies first).
#
# Layers: .ci/run -> ./dev -> just -> cargo / scripts.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Lists the recipes.
default:
    @just --list

# The main job on a built-in sample: builds a sample OS (two versions),
# installs it to a disk image and to a host tree, upgrades, rolls back and
# prints the status after each step.
[group('main')]
demo:
    cargo build --release -p cfs-deploy
    scripts/demo.sh target/release/cfs-deploy

# Every test: unit, oracle (reference crate and cfsctl), privileged mounts.
[group('test')]
test:
    cargo test --workspace --no-fail-fast

# Boots an installed host in QEMU (TCG, OVMF, systemd-boot): Debian trixie
# images v1..v3 with our initramfs module, v1 installed with `install
# to-disk`; upgrade with an /etc change, a v3 that fails boot-complete and
# falls back by itself, rollback, gc, fs-verity refusing a flipped byte.
# About 10 minutes on 2 idle cores (a Debian mirror the first time): not in `test`.
[group('test')]
vm-test:
    cargo build --release -p cfs-deploy
    scripts/vm-test.sh target/release/cfs-deploy

# What CI gates on: formatting, lints, tests.
[group('test')]
check: fmt-check clippy test

[group('lint')]
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

[group('lint')]
fmt-check:
    cargo fmt --all --check

# Coverage-guided fuzzing of every target for `secs` seconds each.
[group('test')]
fuzz secs="60":
    cargo install --locked --quiet cargo-fuzz
    cd fuzz && for t in $(cargo +nightly fuzz list); do \
        cargo +nightly fuzz run "$t" -- -max_total_time={{secs}} -rss_limit_mb=2048; \
    done

# Speed and memory against the reference, in the same run.
[group('bench')]
bench:
    cargo bench -p cfs-tests --bench mkfs
    cargo build --release -p cfs-deploy
    scripts/bench-import.sh target/release/cfs-deploy
    scripts/bench-pull.sh target/release/cfs-deploy
    scripts/bench-cstor.sh target/release/cfs-deploy
    scripts/bench-ostree.sh target/release/cfs-deploy
