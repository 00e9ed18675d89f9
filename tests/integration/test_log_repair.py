"""Damage in the middle of the log: jimbotd refuses to start, --verify reports
it, --repair truncates knowingly, and no sequence is ever handed out twice.

The issue's case: 2,000 acknowledged events, one flipped byte in event 1000.
The old recovery took that for a torn tail, dropped 1,001 events with a warning
and gave sequence 1000 to the next publish. Now: the start fails naming the
file, the offset and the sequences around it; --verify exits 1 with a report;
--repair drops 1000..2000 and exits 0; the next publish gets 2001, and a
consumer group reading from the start sees 1..999 then 2001.
"""
import os
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jbtest  # noqa: E402
from jbtest import Daemon, Stubs, event  # noqa: E402
from jimbot.infra.v1 import event_bus_pb2 as eb  # noqa: E402

SEGMENT = "00000000000000000001.seg"


def record_offset(path, seq):
    """Offset of record @seq in a segment that starts at 1 (24-byte headers)."""
    with open(path, "rb") as f:
        data = f.read()
    off = 32
    while off + 24 <= len(data):
        length, s = struct.unpack_from("<IQ", data, off + 4)
        if s == seq:
            return off
        off += 24 + length
    raise AssertionError(f"sequence {seq} not found in {path}")


class LogRepair(unittest.TestCase):
    def run_jimbotd(self, d, *args):
        p = subprocess.run([jbtest.JIMBOTD, "-c", d.config_path, "--env", "it", "--data-dir",
                            d.data_dir, "--listen", d.address, *args],
                           capture_output=True, text=True, timeout=jbtest.TIMEOUT)
        return p.returncode, p.stdout, p.stderr

    def test_damage_refuses_verify_repair(self):
        d = Daemon("event_bus:\n  fsync: batch\n")
        try:
            ch = d.channel()
            s = Stubs(ch)
            seqs = []
            for b in range(20):
                r = s.publish(*[event("repair.x", b"payload-%d" % (b * 100 + i),
                                      id=f"e{b * 100 + i}") for i in range(100)])
                seqs.extend(r.sequences)
            ch.close()
            self.assertEqual(seqs, list(range(1, 2001)))
            self.assertEqual(d.stop(), 0)

            path = os.path.join(d.data_dir, "log", SEGMENT)
            bad = record_offset(path, 1000)
            with open(path, "r+b") as f:
                f.seek(bad + 24 + 3)
                c = f.read(1)
                f.seek(bad + 24 + 3)
                f.write(bytes([c[0] ^ 0x40]))
            size = os.path.getsize(path)

            rc, _, err = self.run_jimbotd(d)
            print("$ jimbotd\n" + err, flush=True)
            self.assertEqual(rc, 1, err)
            self.assertIn(SEGMENT, err)
            self.assertIn(f"offset {bad}", err)
            self.assertIn("between sequences 999 and 1001", err)
            self.assertIn("jimbotd --verify", err)
            self.assertEqual(os.path.getsize(path), size)

            rc, out, err = self.run_jimbotd(d, "--verify")
            print("$ jimbotd --verify\n" + out, flush=True)
            self.assertEqual(rc, 1, out + err)
            self.assertIn("records: 1999", out)
            self.assertIn("sequences: 1..2000", out)
            self.assertIn(f"DAMAGE: {SEGMENT} offset {bad}: checksum mismatch, "
                          "between sequences 999 and 1001", out)
            self.assertEqual(os.path.getsize(path), size)

            rc, out, err = self.run_jimbotd(d, "--repair")
            print("$ jimbotd --repair\n" + out, flush=True)
            self.assertEqual(rc, 0, out + err)
            self.assertIn("dropped 1000 valid records, sequences 1000..2000", out)
            rc, out, err = self.run_jimbotd(d, "--verify")
            self.assertEqual(rc, 0, out + err)
            self.assertIn("result: clean; the next sequence is 2001", out)

            d.start()
            ch = d.channel()
            s = Stubs(ch)
            r = s.publish(event("repair.x", b"after", id="after"))
            self.assertEqual(list(r.sequences), [2001])
            call = s.bus.Subscribe(eb.SubscribeRequest(
                pattern="repair.>", group="g", deliver_policy=eb.DELIVER_POLICY_ALL,
                max_in_flight=5000), timeout=jbtest.TIMEOUT)
            got = []
            for batch in call:
                got.extend(e.sequence for e in batch.events)
                if got and got[-1] >= 2001:
                    break
            call.cancel()
            ch.close()
            self.assertEqual(got, list(range(1, 1000)) + [2001])
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
