#!/usr/bin/env bash
# docs/configuration.md is generated from the configuration table: fail when
# the committed file differs from what jimbot-config-doc writes today, and
# check that the "every key at its default" YAML it contains is itself valid.
set -euo pipefail
: "${JB_SOURCE_DIR:?}" "${JB_BIN_DIR:?}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$JB_BIN_DIR/jimbot-config-doc" "$JB_SOURCE_DIR/docs/configuration.md.in" "$tmp/configuration.md"
if ! diff -u "$JB_SOURCE_DIR/docs/configuration.md" "$tmp/configuration.md"; then
    echo "FAIL: docs/configuration.md is out of date: run 'make config-doc' and commit it" >&2
    exit 1
fi

# The defaults block: the last ```yaml block of the page.
awk '/^```yaml$/ {buf = ""; on = 1; next} /^```$/ {on = 0} on {buf = buf $0 "\n"} END {printf "%s", buf}' \
    "$tmp/configuration.md" > "$tmp/defaults.yaml"
grep -q '^event_bus:' "$tmp/defaults.yaml"
"$JB_BIN_DIR/jimbotd" -c "$tmp/defaults.yaml" --env none --check-config > "$tmp/resolved.txt"
# Every key of the table appears, set from the file rather than by default.
if grep -q '# default$' "$tmp/resolved.txt"; then
    echo "FAIL: keys missing from the defaults block:" >&2
    grep '# default$' "$tmp/resolved.txt" >&2
    exit 1
fi
echo "ok: docs/configuration.md matches the table"
