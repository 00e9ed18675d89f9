#!/usr/bin/env bash
# The jimbot wheel (scripts/python_wheel.sh, what `make python-wheel` runs) installs and imports
# outside the repository: built from the build tree into a temporary folder, installed offline
# (--no-deps --no-index) into a fresh venv that sees Debian's grpcio and protobuf
# (--system-site-packages), then imported the way the seed's components do, from a folder outside
# the repository with no PYTHONPATH: the generated schemas, jimbot.EventBus, jimbot.Infrastructure
# and the mocks. The wheel declares its dependencies (grpcio, protobuf) and carries every
# generated module.
set -euo pipefail

src=${JB_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${JB_BUILD_DIR:-$src/build}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/jbwheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_wheel: $*" >&2; exit 1; }

bash "$src/scripts/python_wheel.sh" "$build" "$tmp/dist" >/dev/null
wheels=("$tmp"/dist/jimbot-*.whl)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel, got: ${wheels[*]}"
wheel=${wheels[0]}

# What the wheel holds and declares.
/usr/bin/python3 - "$wheel" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = set(z.namelist())
for need in ("jimbot/__init__.py", "jimbot/coordinator.py", "jimbot/event_bus.py",
             "jimbot/testing.py", "jimbot/errors.py", "jimbot/topics.py",
             "jimbot/infra/v1/infrastructure_pb2.py", "jimbot/infra/v1/infrastructure_pb2_grpc.py",
             "jimbot/infra/v1/event_bus_pb2_grpc.py",
             "jimbot/infrastructure/__init__.py",
             "jimbot/infrastructure/serialization/game_events_pb2.py",
             "jimbot/infrastructure/serialization/training_events_pb2.py",
             "jimbot/infrastructure/serialization/strategy_events_pb2.py"):
    assert need in names, f"{need} missing from the wheel"
assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")], "bytecode in the wheel"
meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
requires = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines()
            if l.startswith("Requires-Dist:")]
assert any(r.startswith("grpcio") for r in requires), requires
assert any(r.startswith("protobuf") for r in requires), requires
PY

/usr/bin/python3 -m venv --system-site-packages "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --no-deps --no-index --disable-pip-version-check \
  "$wheel"

mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
env -u PYTHONPATH PYTHONDONTWRITEBYTECODE=1 "$tmp/venv/bin/python" - "$tmp/venv" <<'PY'
import asyncio, os, sys
from jimbot.infrastructure.serialization import game_events_pb2
from jimbot.infrastructure.serialization import strategy_events_pb2, training_events_pb2  # noqa
import jimbot
from jimbot.testing import MockEventBus, MockInfrastructure

venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(jimbot.__file__)
assert where.startswith(venv + os.sep), f"jimbot imported from {where}, not the venv"
assert jimbot.EventBus and jimbot.Infrastructure and jimbot.errors.RateLimitedError

async def main():
    bus = MockEventBus()
    update = game_events_pb2.GameStateUpdate(game_id="g1")
    update.joker_purchased.joker_name = "Jimbo"
    await bus.publish("game_events.joker_purchased", update)
    assert bus.messages("game_events.>")[0].joker_purchased.joker_name == "Jimbo"
    infra = MockInfrastructure()
    async with infra.gpu("training") as lease:
        assert lease.device == 0
    assert (await infra.api_quota("strategy")).granted
    # The real clients build without a daemon (the channel opens on first use).
    await jimbot.Infrastructure("127.0.0.1:1").close()
    await jimbot.EventBus("127.0.0.1:1").close()

asyncio.run(main())
print("ok", jimbot.__version__, where)
PY
