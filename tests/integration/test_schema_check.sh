#!/usr/bin/env bash
# Integration test of jimbot-schema-check (`make schema-check`).
#
# For each fixture folder under tests/schema/ (one change to base/v1.proto
# each) it compiles base and case with the real protoc into descriptor sets in
# a temporary folder, runs the checker on the pair and asserts the exit status,
# the exact break line on stderr and that it is the only one. Then: the real
# tree against the committed proto/baseline.binpb, the base against itself,
# and bad input (garbage, empty, missing file, bad usage) getting exit 2 with
# a clear reason. Prints a summary; exits non-zero on any failure.
set -uo pipefail

src=${JB_SOURCE_DIR:?JB_SOURCE_DIR is not set (run through ctest)}
build=${JB_BUILD_DIR:?JB_BUILD_DIR is not set (run through ctest)}
check=${JB_BIN_DIR:-$build/bin}/jimbot-schema-check
fixtures=$src/tests/schema
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() {
  failed=$((failed + 1))
  echo "FAIL: $*" >&2
}

# compile NAME: writes $tmp/NAME.binpb from every .proto in $fixtures/NAME.
compile() {
  local dir=$fixtures/$1 files
  files=$(cd "$dir" && ls ./*.proto)
  # shellcheck disable=SC2086
  (cd "$dir" && protoc -I . --include_source_info --descriptor_set_out="$tmp/$1.binpb" $files)
}

# expect NAME RC TEXT ARGS...: runs the checker, checks rc and that stderr
# holds TEXT (a fixed string; empty: nothing to look for).
run_check() {
  local name=$1 want_rc=$2 want_text=$3
  shift 3
  "$check" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [[ $rc -ne $want_rc ]]; then
    fail "$name: exit status $rc, expected $want_rc; stderr:"
    sed 's/^/    /' "$tmp/err" >&2
    return 1
  fi
  if [[ -n $want_text ]] && ! grep -qF -- "$want_text" "$tmp/err"; then
    fail "$name: stderr lacks '$want_text'; stderr:"
    sed 's/^/    /' "$tmp/err" >&2
    return 1
  fi
  return 0
}

if ! compile base; then
  echo "FAIL: protoc cannot compile tests/schema/base" >&2
  exit 1
fi

# case|exit status|the one break line expected on stderr (empty: compatible)
cases=$(
  cat <<'TABLE'
removed_field|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 8 'score': removed without reserving number 8 and name 'score'
removed_field_reserved|0|
changed_number|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 8 'score': number changed from 8 to 11
changed_type|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 1 'chips': type changed from double to float
changed_label|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 2 'mult': label changed from singular to repeated
optional_dropped|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 4 'bonus': label changed from optional to singular
renamed_field|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 2 'mult': renamed to 'multiplier'
into_oneof|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 8 'score': moved into oneof 'source'
out_of_oneof|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 7 'planet': moved out of oneof 'source'
changed_message_type|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 10 'nested': type changed from jimbot.test.v1.HandPlayed.Nested to jimbot.test.v1.PlayResponse
changed_map_value|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 5 'tags': type changed from map<string, string> to map<string, int32>
nested_changed|1|proto/v1.proto: jimbot.test.v1.HandPlayed.Nested: field 1 'depth': type changed from int32 to int64
removed_enum_value|1|proto/v1.proto: jimbot.test.v1.Suit: value 2 'SUIT_SPADES': removed without reserving number 2 and name 'SUIT_SPADES'
renamed_enum_value|1|proto/v1.proto: jimbot.test.v1.Suit: value 2 'SUIT_SPADES': renamed to 'SUIT_SPADE'
removed_message|1|proto/v1.proto: jimbot.test.v1.Ping: message removed
removed_method|1|proto/v1.proto: jimbot.test.v1.Game: method 'Watch': removed
removed_service|1|proto/v1.proto: jimbot.test.v1.Game: service removed
changed_method_type|1|proto/v1.proto: jimbot.test.v1.Game: method 'Play': output type changed from jimbot.test.v1.PlayResponse to jimbot.test.v1.HandPlayed
streaming_changed|1|proto/v1.proto: jimbot.test.v1.Game: method 'Watch': server streaming removed
changed_package|1|proto/v1.proto: package changed from 'jimbot.test.v1' to 'jimbot.test.v2'
removed_file|1|proto/v1.proto: file removed
reused_reserved|1|proto/v1.proto: jimbot.test.v1.HandPlayed: field 9 'note': reuses number 9 reserved in the baseline
added_field|0|
added_message|0|
added_enum_value|0|
added_method|0|
comments_only|0|
TABLE
)

declare -A listed=()
while IFS='|' read -r name want_rc want_line; do
  listed[$name]=1
  if ! compile "$name"; then
    fail "$name: protoc cannot compile tests/schema/$name"
    continue
  fi
  run_check "$name" "$want_rc" "$want_line" "$tmp/base.binpb" "$tmp/$name.binpb" || continue
  nbreaks=$(grep -c '^proto/' "$tmp/err")
  if [[ $want_rc -eq 1 && $nbreaks -ne 1 ]]; then
    fail "$name: expected exactly one break line, got $nbreaks:"
    sed 's/^/    /' "$tmp/err" >&2
    continue
  fi
  if [[ $want_rc -eq 1 ]] && ! grep -q '^schema-check: 1 breaking change ' "$tmp/err"; then
    fail "$name: no summary line on stderr"
    continue
  fi
  if [[ $want_rc -eq 0 ]] && ! grep -q ': compatible$' "$tmp/out"; then
    fail "$name: no 'compatible' summary on stdout"
    continue
  fi
  pass
done <<<"$cases"

# Every fixture folder must be in the table, so none is silently skipped.
for dir in "$fixtures"/*/; do
  name=$(basename "$dir")
  if [[ $name != base && -z ${listed[$name]:-} ]]; then
    fail "tests/schema/$name has no expectation in $(basename "$0")"
  fi
done

# The base against itself, and the real tree against the committed baseline.
run_check self 0 "" "$tmp/base.binpb" "$tmp/base.binpb" && pass
if run_check real-tree 0 "" "$src/proto/baseline.binpb" "$build/proto/descriptor_set.binpb"; then
  if grep -q '^schema-check: [0-9]* files, [0-9]* messages compared: compatible$' "$tmp/out"; then
    pass
  else
    fail "real-tree: unexpected summary: $(cat "$tmp/out")"
  fi
fi

# Two breaks in one file: both reported, in order, with a plural summary.
if compile removed_field && compile changed_type; then
  sed 's/double chips = 1;/float chips = 1;/' "$fixtures/removed_field/v1.proto" >"$tmp/v1.proto"
  if (cd "$tmp" && protoc -I . --descriptor_set_out="$tmp/two.binpb" v1.proto); then
    if run_check two-breaks 1 "schema-check: 2 breaking changes" "$tmp/base.binpb" "$tmp/two.binpb"; then
      if [[ $(grep -c '^proto/' "$tmp/err") -eq 2 ]]; then pass; else fail "two-breaks: not 2 lines"; fi
    fi
  else
    fail "two-breaks: protoc failed"
  fi
fi

# --prefix changes the file names in reports.
run_check prefix 1 "schemas/v1.proto: jimbot.test.v1.Ping: message removed" \
  --prefix schemas/ "$tmp/base.binpb" "$tmp/removed_message.binpb" && pass

# Bad input: exit 2 and a clear reason, for either argument.
head -c 4096 /dev/urandom >"$tmp/garbage.bin"
printf 'hello, world\n' >"$tmp/text.txt"
: >"$tmp/empty.bin"
run_check garbage 2 "garbage.bin: not a descriptor set" "$tmp/garbage.bin" "$tmp/base.binpb" && pass
run_check text 2 "text.txt: not a descriptor set" "$tmp/base.binpb" "$tmp/text.txt" && pass
run_check empty 2 "empty.bin: empty file, not a descriptor set" "$tmp/empty.bin" "$tmp/base.binpb" && pass
run_check missing 2 "no-such.binpb: cannot open" "$tmp/no-such.binpb" "$tmp/base.binpb" && pass
run_check one-arg 2 "usage: jimbot-schema-check" "$tmp/base.binpb" && pass
run_check bad-option 2 "unknown option '--frobnicate'" --frobnicate "$tmp/base.binpb" "$tmp/base.binpb" && pass
if "$check" --help | grep -q "usage: jimbot-schema-check"; then pass; else fail "--help"; fi

echo "test_schema_check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
