#!/usr/bin/python3
"""Writes the seed inputs of fuzz_publish.c into tests/fuzz/corpus/publish/.

Run from the repository root after `make build` (it imports the generated
Python modules from build/python):

    PYTHONPATH=build/python tests/fuzz/seed_publish.py

Each seed is a valid encoding: PublishRequests packed by protobuf, Event
envelopes with and without the delivery suffix, and a few hand-written shapes
that a canonical encoder never makes (padded keys, unknown fields, a field
given twice, a NUL byte in a string).
"""
import os

from jimbot.infra.v1 import event_bus_pb2 as pb

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "publish")


def event(i, headers=(), payload=b"", **kw):
    e = pb.Event(
        id=f"evt-{i}",
        topic=f"training.run.{i}",
        type="jimbot.step",
        source="trainer-0",
        timestamp_ms=1764288000000 + i,
        payload=payload,
        **kw,
    )
    for k, v in headers:
        e.headers[k] = v
    return e


def write(name, data):
    with open(os.path.join(OUT, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    write("empty", b"")
    write("one-empty-event", pb.PublishRequest(events=[pb.Event()]).SerializeToString())
    write("one-event", pb.PublishRequest(events=[event(1)]).SerializeToString())
    write(
        "three-events",
        pb.PublishRequest(
            events=[
                event(1, headers=[("trace-id", "abc"), ("tenant", "t1")], payload=b"\x00\x01\x02"),
                event(2, payload=bytes(range(200))),
                event(3, headers=[("k", "")], sequence=7, delivery_attempt=2),
            ]
        ).SerializeToString(),
    )
    write("negative-timestamp", pb.PublishRequest(events=[pb.Event(timestamp_ms=-1)]).SerializeToString())
    e = event(4, headers=[("a", "1"), ("b", "2")], payload=b"{\"loss\": 0.25}")
    write("envelope", e.SerializeToString())
    e.sequence = 2**64 - 1
    e.delivery_attempt = 2**32 - 1
    write("envelope-delivered", e.SerializeToString())
    # Hand-written: a padded key for topic, unknown fields of every valid wire
    # type, the topic given twice, and a header entry with its key twice.
    ev = (
        b"\x92\x80\x00\x03a.b"  # topic, key padded to 3 bytes
        b"\x78\x01\x79abcdefgh\x7a\x01x\x7d1234"  # unknown fields 15
        b"\x12\x03c.d"  # topic again: the last wins
        b"\x3a\x09\x0a\x01k\x0a\x01j\x12\x01v"  # header: key twice, then value
    )
    write("hand-shapes", b"\x0a" + bytes([len(ev)]) + ev + b"\x80\x00\x00")
    write("nul-in-topic", b"\x0a\x05\x12\x03a\x00b")


if __name__ == "__main__":
    main()
