"""ZooKeeper's multiRead (opcode 22, servers 3.6 and later), which kazoo
does not offer: several getData/getChildren in ONE request.

Under contention every decision reads the gate, the queue's version and
its children; as one request instead of two that is one request less for
the server and, above all, for kazoo's pure-Python client, whose cost per
request (queueing, a select round, xid matching, an async result) is most
of a waiter's CPU.  The server answers the operations in order, on the
same state or newer, exactly as it answers pipelined requests of one
session; an operation that fails (a node gone) fails alone.

Only plain reads without watches go here (kazoo registers a watch from
the request it sent, which this one is not).
"""
from __future__ import annotations

import importlib
from typing import Any, NamedTuple

# kazoo is imported lazily (the extra 'zookeeper'), and ships no types.
Client = Any
Future = Any

MULTI_READ = 22
GET_DATA = 4
GET_CHILDREN = 8
ERROR = -1


class Op(NamedTuple):
    kind: int          # GET_DATA or GET_CHILDREN
    path: str


class MultiRead:
    """The request object kazoo's connection sends (``type``, ``serialize``)
    and decodes the reply with (``deserialize``)."""

    __slots__ = ("ops",)
    type = MULTI_READ     # kazoo's connection writes request.type before the body

    def __init__(self, ops: tuple[Op, ...]) -> None:
        self.ops = ops

    def __repr__(self) -> str:
        return f"MultiRead({list(self.ops)!r})"

    def serialize(self) -> bytearray:
        ser = _serialization()
        b = bytearray()
        for op in self.ops:
            b.extend(ser.multiheader_struct.pack(op.kind, False, -1))
            b.extend(ser.write_string(op.path))
            b.extend(b"\0")                       # no watch
        b.extend(ser.multiheader_struct.pack(-1, True, -1))
        return b

    @classmethod
    def deserialize(cls, buf: bytes, offset: int) -> list[Any]:
        ser = _serialization()
        errors = importlib.import_module("kazoo.exceptions").EXCEPTIONS
        results: list[Any] = []
        while True:
            header, offset = ser.MultiHeader.deserialize(buf, offset)
            if header.done:
                return results
            if header.type == GET_DATA:
                data, offset = ser.read_buffer(buf, offset)
                stat = ser.ZnodeStat._make(ser.stat_struct.unpack_from(buf, offset))
                results.append((data, stat))
                offset += ser.stat_struct.size
            elif header.type == GET_CHILDREN:
                count = ser.int_struct.unpack_from(buf, offset)[0]
                offset += ser.int_struct.size
                children = []
                for _ in range(max(0, count)):
                    child, offset = ser.read_string(buf, offset)
                    children.append(child)
                results.append(children)
            elif header.type == ERROR:
                err = ser.int_struct.unpack_from(buf, offset)[0]
                offset += ser.int_struct.size
                results.append(errors[err]())
            else:
                raise ValueError(f"multiRead: unexpected result type {header.type}")


def _serialization() -> Any:
    return importlib.import_module("kazoo.protocol.serialization")


def send(client: Client, ops: list[Op]) -> Future:
    """Send the reads as one request; the future's value is a list with,
    per operation, ``(data, stat)`` (GET_DATA), the children names
    (GET_CHILDREN), or the kazoo exception of that operation."""
    result = client.handler.async_result()
    # SEAM (kazoo): _call is how every kazoo request is queued; there is no
    # public way to send an opcode kazoo does not know.
    client._call(MultiRead(tuple(Op(o.kind, client.chroot + o.path if client.chroot else o.path)
                             for o in ops)), result)
    return result


__all__ = ["GET_CHILDREN", "GET_DATA", "Op", "send"]
