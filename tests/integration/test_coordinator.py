"""The resource coordinator of a real jimbotd over raw gRPC: GPU leases (order, exclusivity,
expiry with its warning, a holder that dies, release, restart and re-attach, two devices) and the
API budget (sliding window, waiting with priority, persistence across restarts), and bad input.

Run with /usr/bin/python3 (Debian's grpcio); PYTHONPATH must hold build/python.
"""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

import grpc

import jbtest
from jimbot.infra.v1 import infrastructure_pb2 as pb

TIMEOUT = jbtest.TIMEOUT
# One device, no NVML, whatever machine the tests run on.
ONE_GPU = """
resource_coordinator:
  gpu:
    devices: 1
    nvml_library: ''
    priority_components: [training, inference]
"""


class Lease:
    """One AcquireGpu stream read on a thread: its events in a queue, then its end."""

    def __init__(self, stubs, component, priority=0, seconds=0, lease_id="", pid=0):
        self.events = queue.Queue()
        self.code = None
        self.details = None
        self.done = threading.Event()
        req = pb.AcquireGpuRequest(component=component, priority=priority,
                                   duration_seconds=seconds, lease_id=lease_id, pid=pid)
        self.call = stubs.infra.AcquireGpu(req)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for ev in self.call:
                self.events.put(ev)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code = e.code()
            self.details = e.details()
        self.done.set()
        self.events.put(None)

    def next(self, kind, timeout=TIMEOUT):
        """The next event of @kind ("queued", "granted"...), skipping keepalives."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if ev is None:
                raise AssertionError(f"stream ended {self.code} {self.details} before {kind}")
            which = ev.WhichOneof("event")
            if which == kind:
                return getattr(ev, which)
            if which == "keepalive" and kind != "keepalive":
                continue
            if kind == "granted" and which == "queued":
                continue
            raise AssertionError(f"expected {kind}, got {which}")

    def granted_within(self, timeout):
        """The grant if it comes within @timeout, else None (the stream stays open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if ev is None:
                raise AssertionError(f"stream ended {self.code} {self.details}")
            if ev.WhichOneof("event") == "granted":
                return ev.granted
        return None

    def end(self, timeout=TIMEOUT):
        self.done.wait(timeout)
        return self.code

    def cancel(self):
        self.call.cancel()
        self.done.wait(TIMEOUT)


def status(stubs):
    return stubs.infra.GetResourceStatus(pb.GetResourceStatusRequest(), timeout=TIMEOUT)


def quota(stubs, component="strategy", count=1, wait_ms=0, priority=0):
    return stubs.infra.AcquireApiQuota(
        pb.AcquireApiQuotaRequest(component=component, count=count, wait_ms=wait_ms,
                                  priority=priority), timeout=TIMEOUT + wait_ms / 1000)


def wait_until(pred, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


class CoordinatorTest(unittest.TestCase):
    CONFIG = ONE_GPU

    def setUp(self):
        self.d = jbtest.Daemon(self.CONFIG)
        self.ch = self.d.channel()
        self.s = jbtest.Stubs(self.ch)
        self.leases = []

    def tearDown(self):
        for lease in self.leases:
            lease.call.cancel()
        self.ch.close()
        self.d.close()

    def lease(self, *args, **kw):
        lease = Lease(self.s, *args, **kw)
        self.leases.append(lease)
        return lease

    def restart(self, sig=signal.SIGTERM):
        # The daemon first: closing the channel first would cancel the streams on it.
        self.d.stop(sig)
        self.ch.close()
        self.d.start()
        self.ch = self.d.channel()
        self.s = jbtest.Stubs(self.ch)


class GpuOrderTest(CoordinatorTest):
    def test_one_holder_at_a_time_in_the_contract_order(self):
        holder = self.lease("analytics")
        first = holder.next("granted")
        self.assertEqual(first.device, 0)
        self.assertTrue(first.lease_id)
        # Arrival order: low, high, then a priority component, then a second one of lower rank.
        low = self.lease("analytics", priority=0)
        self.assertEqual(low.next("queued").position, 1)
        high = self.lease("analytics", priority=5)
        self.assertEqual(high.next("queued").position, 1)
        self.assertEqual(low.next("queued").position, 2)
        infer = self.lease("inference", priority=-3)
        self.assertEqual(infer.next("queued").position, 1)
        train = self.lease("training", priority=-9)
        self.assertEqual(train.next("queued").position, 1)
        self.assertEqual(infer.next("queued").position, 2)

        st = status(self.s)
        self.assertFalse(st.gpu_available)
        self.assertEqual(st.gpu_holder, "analytics")
        self.assertEqual(st.gpu_waiting, 4)
        self.assertEqual([w.component for w in st.gpu_waiters],
                         ["training", "inference", "analytics", "analytics"])
        self.assertEqual([w.priority for w in st.gpu_waiters], [-9, -3, 5, 0])
        self.assertEqual(len(st.gpus), 1)
        self.assertEqual(st.gpus[0].lease_id, first.lease_id)

        # Each release hands the device to exactly the next in the contract order: the
        # others stay queued, and the status names the new holder's lease.
        current, current_grant = holder, first
        expected = [("training", -9), ("inference", -3), ("analytics", 5), ("analytics", 0)]
        for i, nxt in enumerate((train, infer, high, low)):
            r = self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(lease_id=current_grant.lease_id),
                                        timeout=TIMEOUT)
            self.assertEqual(r.device, 0)
            self.assertEqual(current.end(), grpc.StatusCode.OK)
            current_grant = nxt.next("granted")
            st = status(self.s)
            self.assertEqual(st.gpus[0].lease_id, current_grant.lease_id)
            self.assertEqual([(w.component, w.priority) for w in st.gpu_waiters], expected[i + 1:])
            self.assertEqual(st.gpus[0].holder, expected[i][0])
            current = nxt

    def test_a_holder_that_ends_its_stream_frees_the_gpu_at_once(self):
        holder = self.lease("training")
        holder.next("granted")
        waiter = self.lease("analytics")
        waiter.next("queued")
        holder.cancel()
        self.assertEqual(waiter.next("granted").device, 0)

    def test_a_waiter_that_leaves_is_out_of_the_queue(self):
        holder = self.lease("training")
        grant = holder.next("granted")
        gone = self.lease("analytics", priority=9)
        gone.next("queued")
        stays = self.lease("analytics", priority=1)
        self.assertEqual(stays.next("queued").position, 2)
        gone.cancel()
        self.assertEqual(stays.next("queued").position, 1)
        self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(lease_id=grant.lease_id), timeout=TIMEOUT)
        stays.next("granted")

    def test_a_killed_holder_process_frees_the_gpu(self):
        code = (
            "import sys, grpc\n"
            "from jimbot.infra.v1 import infrastructure_pb2 as pb, infrastructure_pb2_grpc as g\n"
            f"ch = grpc.insecure_channel('{self.d.address}')\n"
            "s = g.InfrastructureStub(ch)\n"
            "for ev in s.AcquireGpu(pb.AcquireGpuRequest(component='training')):\n"
            "    if ev.WhichOneof('event') == 'granted':\n"
            "        print(ev.granted.lease_id, flush=True)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                 env=os.environ)
        try:
            lease_id = child.stdout.readline().strip()
            self.assertTrue(lease_id)
            waiter = self.lease("analytics")
            waiter.next("queued")
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=TIMEOUT)
            grant = waiter.next("granted")
            self.assertNotEqual(grant.lease_id, lease_id)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()


class GpuExpiryTest(CoordinatorTest):
    CONFIG = ONE_GPU + """    max_allocation_seconds: 2
    expiry_warning_seconds: 1
    keepalive_ms: 200
"""

    def test_expiry_warns_first_then_ends_and_hands_on(self):
        holder = self.lease("training", seconds=60)  # capped at 2 s
        grant = holder.next("granted")
        waiter = self.lease("analytics")
        waiter.next("queued")
        warned = holder.next("expiring")
        self.assertEqual(warned.expires_ms, grant.expires_ms)
        self.assertEqual(holder.end(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(holder.details, "lease expired")
        self.assertEqual(waiter.next("granted").device, 0)

    def test_keepalives_carry_the_expiry(self):
        holder = self.lease("training")
        grant = holder.next("granted")
        self.assertEqual(holder.next("keepalive").expires_ms, grant.expires_ms)


class GpuRestartTest(CoordinatorTest):
    CONFIG = ONE_GPU + """    reattach_grace_seconds: 2
"""

    def test_a_lease_survives_a_restart_for_its_holder_to_reattach(self):
        holder = self.lease("training")
        grant = holder.next("granted")
        self.restart()
        self.assertEqual(holder.end(), grpc.StatusCode.UNAVAILABLE)
        st = status(self.s)
        self.assertEqual(st.gpus[0].lease_id, grant.lease_id)
        self.assertTrue(st.gpus[0].restored)
        # Nobody else gets the device while its holder may still compute on it.
        other = self.lease("inference")
        other.next("queued")
        again = self.lease("training", lease_id=grant.lease_id)
        back = again.next("granted")
        self.assertTrue(back.reattached)
        self.assertEqual((back.lease_id, back.device, back.expires_ms),
                         (grant.lease_id, grant.device, grant.expires_ms))
        self.assertIsNone(other.granted_within(0.5))
        self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(lease_id=grant.lease_id), timeout=TIMEOUT)
        other.next("granted")

    def test_a_lease_not_reattached_is_freed_after_the_grace(self):
        holder = self.lease("training")
        holder.next("granted")
        self.restart(signal.SIGKILL)
        other = self.lease("inference")
        other.next("granted")

    def test_reattach_checks_the_lease(self):
        holder = self.lease("training")
        grant = holder.next("granted")
        for lease_id, component, code in [
                ("no-such-lease", "training", grpc.StatusCode.NOT_FOUND),
                (grant.lease_id, "inference", grpc.StatusCode.INVALID_ARGUMENT),
                (grant.lease_id, "training", grpc.StatusCode.ALREADY_EXISTS)]:
            with self.subTest(lease_id=lease_id, component=component):
                bad = self.lease(component, lease_id=lease_id)
                self.assertEqual(bad.end(), code)
        self.assertEqual(status(self.s).gpus[0].lease_id, grant.lease_id)


class TwoDevicesTest(CoordinatorTest):
    CONFIG = ONE_GPU.replace("devices: 1", "devices: 2")

    def test_each_device_has_its_own_lease(self):
        a = self.lease("training").next("granted")
        b = self.lease("inference").next("granted")
        self.assertEqual({a.device, b.device}, {0, 1})
        third = self.lease("analytics")
        third.next("queued")
        st = status(self.s)
        self.assertEqual(len(st.gpus), 2)
        self.assertFalse(st.gpu_available)
        self.assertEqual(st.gpu_source, "config")


FAKE_NVML = os.path.join(os.environ.get("JB_BUILD_DIR", os.path.join(jbtest.SOURCE, "build")),
                         "tests", "libfake-nvml.so")


class NvmlTest(CoordinatorTest):
    """The devices and their memory from NVML: the tests' fake library, scripted by a file."""
    RELEASE_TIMEOUT = 60
    DEVICES = ["device 0 name=NVIDIA-H200 uuid=GPU-aaaa total=1000 used=10",
               "device 1 name=NVIDIA-H200 uuid=GPU-bbbb total=2000 used=20"]

    def setUp(self):
        self.script = os.path.join(jbtest.tempfile.mkdtemp(prefix="jbnvml-"), "nvml.txt")
        self.write_script(self.DEVICES)
        self.CONFIG = f"""
resource_coordinator:
  gpu:
    devices: auto
    nvml_library: '{FAKE_NVML}'
    release_timeout_seconds: {self.RELEASE_TIMEOUT}
"""
        # Every start of the daemon (restarts too) reads the script.
        self.old_script = os.environ.get("FAKE_NVML_SCRIPT")
        os.environ["FAKE_NVML_SCRIPT"] = self.script
        super().setUp()
        self.sleeper = subprocess.Popen(["sleep", "600"])

    def tearDown(self):
        self.sleeper.kill()
        self.sleeper.wait()
        super().tearDown()
        if self.old_script is None:
            del os.environ["FAKE_NVML_SCRIPT"]
        else:
            os.environ["FAKE_NVML_SCRIPT"] = self.old_script
        jbtest.shutil.rmtree(os.path.dirname(self.script), ignore_errors=True)

    def write_script(self, lines):
        tmp = self.script + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.script)

    def test_devices_come_from_nvml(self):
        st = status(self.s)
        self.assertEqual(st.gpu_source, "nvml")
        self.assertEqual([(g.index, g.name, g.uuid, g.memory_total_bytes) for g in st.gpus],
                         [(0, "NVIDIA-H200", "GPU-aaaa", 1000), (1, "NVIDIA-H200", "GPU-bbbb", 2000)])
        a = self.lease("training").next("granted")
        b = self.lease("training").next("granted")
        self.assertEqual({(a.device, a.device_uuid), (b.device, b.device_uuid)},
                         {(0, "GPU-aaaa"), (1, "GPU-bbbb")})

    def test_a_device_is_handed_on_once_its_memory_is_freed(self):
        self.write_script(self.DEVICES[:1])
        self.restart()
        holder = self.lease("training", pid=self.sleeper.pid)
        grant = holder.next("granted")
        waiter = self.lease("inference")
        waiter.next("queued")
        self.write_script(self.DEVICES[:1] + [f"process 0 pid={self.sleeper.pid} used=500"])
        r = self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(lease_id=grant.lease_id),
                                    timeout=TIMEOUT)
        self.assertEqual(r.memory_held_bytes, 500)
        self.assertEqual(holder.end(), grpc.StatusCode.OK)
        # The memory is still held: the device waits, and says why.
        self.assertIsNone(waiter.granted_within(0.5))
        self.assertTrue(status(self.s).gpus[0].releasing)
        self.write_script(self.DEVICES[:1])
        self.assertEqual(waiter.next("granted").device, 0)
        self.assertFalse(status(self.s).gpus[0].releasing)


class NvmlTimeoutTest(NvmlTest):
    RELEASE_TIMEOUT = 1

    def test_a_device_whose_memory_stays_held_is_handed_on_after_the_timeout(self):
        self.write_script(self.DEVICES[:1] + [f"process 0 pid={self.sleeper.pid} used=700"])
        self.restart()
        holder = self.lease("training", pid=self.sleeper.pid)
        grant = holder.next("granted")
        waiter = self.lease("inference")
        waiter.next("queued")
        r = self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(lease_id=grant.lease_id),
                                    timeout=TIMEOUT)
        self.assertEqual(r.memory_held_bytes, 700)
        self.assertEqual(waiter.next("granted").device, 0)
        self.d.wait_for("still held after release_timeout")

    # The parent's tests need the long timeout.
    test_devices_come_from_nvml = None
    test_a_device_is_handed_on_once_its_memory_is_freed = None


class BudgetTest(CoordinatorTest):
    CONFIG = ONE_GPU + """  claude:
    hourly_limit: 5
"""

    def test_spent_budget_survives_restarts(self):
        for left in (4, 3, 2):
            r = quota(self.s)
            self.assertTrue(r.granted)
            self.assertEqual((r.remaining, r.limit), (left, 5))
        self.assertEqual(status(self.s).claude_requests_remaining, 2)
        self.restart(signal.SIGTERM)
        self.assertEqual(status(self.s).claude_requests_remaining, 2)
        r = quota(self.s, count=1)
        self.assertEqual(r.remaining, 1)
        # A grant is answered once durable: even kill -9 keeps it.
        self.restart(signal.SIGKILL)
        st = status(self.s)
        self.assertEqual((st.claude_requests_remaining, st.claude_requests_used), (1, 4))
        self.assertTrue(quota(self.s).granted)
        r = quota(self.s)
        self.assertFalse(r.granted)
        self.assertGreater(r.retry_after_ms, 0)
        self.assertLessEqual(r.retry_after_ms, 3600 * 1000)
        self.assertGreater(status(self.s).claude_next_slot_ms, 0)

    def test_bad_input_changes_nothing(self):
        quota(self.s)
        before = status(self.s)
        for kw in [dict(component=""), dict(count=6), dict(count=2**31),
                   dict(component="x" * 1000)]:
            with self.subTest(**{k: str(v)[:20] for k, v in kw.items()}):
                with self.assertRaises(grpc.RpcError) as cm:
                    quota(self.s, **kw)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError) as cm:
            self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(lease_id="nope"), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as cm:
            self.s.infra.ReleaseGpu(pb.ReleaseGpuRequest(), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        bad = self.lease("")
        self.assertEqual(bad.end(), grpc.StatusCode.INVALID_ARGUMENT)
        after = status(self.s)
        self.assertEqual(after.claude_requests_remaining, before.claude_requests_remaining)
        self.assertTrue(after.gpu_available)
        self.assertEqual(len(after.gpu_waiters), 0)


class BudgetWaitTest(CoordinatorTest):
    CONFIG = ONE_GPU + """  claude:
    hourly_limit: 1
    window_seconds: 2
"""

    def test_waiters_are_served_higher_priority_first(self):
        self.assertTrue(quota(self.s, component="analytics").granted)
        r = quota(self.s, component="analytics")
        self.assertFalse(r.granted)
        self.assertGreater(r.retry_after_ms, 0)
        done = []
        lock = threading.Lock()

        def ask(name, priority):
            r = quota(self.s, component=name, wait_ms=20000, priority=priority)
            with lock:
                done.append((name, r.granted))

        low = threading.Thread(target=ask, args=("analytics", 0))
        low.start()
        self.assertTrue(wait_until(lambda: status(self.s).claude_waiting == 1))
        high = threading.Thread(target=ask, args=("strategy", 10))
        high.start()
        self.assertTrue(wait_until(lambda: status(self.s).claude_waiting == 2))
        high.join(TIMEOUT)
        low.join(TIMEOUT)
        self.assertEqual(done, [("strategy", True), ("analytics", True)])

    def test_a_wait_that_runs_out_is_not_granted(self):
        self.assertTrue(quota(self.s).granted)
        r = quota(self.s, wait_ms=100)
        self.assertFalse(r.granted)
        self.assertGreater(r.retry_after_ms, 0)


if __name__ == "__main__":
    unittest.main()
