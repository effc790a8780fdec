#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test in the workspace.
# Tests that need root (network namespaces, TAP) print SKIP and pass when run unprivileged.
set -euo pipefail

cd "$(dirname "$0")/.."
start=$SECONDS
step="setup"
log=$(mktemp -t ds-test.XXXXXX)

finish() {
    local rc=$?
    rm -f "$log"
    if ((rc != 0)); then
        echo "test.sh: FAILED during '$step' (exit $rc) after $((SECONDS - start)) s" >&2
    fi
}
trap finish EXIT

bash scripts/setup.sh
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "test.sh: 'cargo $tool' is not available; install it (rustup component add ${tool/fmt/rustfmt})" >&2
        exit 1
    fi
done

step="cargo fmt --all -- --check"
echo "== $step"
cargo fmt --all -- --check

step="cargo clippy --workspace --all-targets -- -D warnings"
echo "== $step"
cargo clippy --workspace --all-targets -- -D warnings

step="cargo test --workspace"
echo "== $step"
# Keep a copy of the output to total up the per-binary summaries at the end.
cargo test --workspace 2>&1 | tee "$log"

echo "== elapsed $((SECONDS - start)) s"
# The last lines are cargo test's own summaries, totalled over all test binaries.
grep '^test result:' "$log" | awk '
    { for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed/) p += $(i-1)
        if ($(i) ~ /^failed/) f += $(i-1)
        if ($(i) ~ /^ignored/) s += $(i-1)
      } n++ }
    END { printf "test binaries: %d\n", n; printf "cargo-test: %d passed, %d failed, %d skipped\n", p, f, s }'
