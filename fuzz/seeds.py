#!/usr/bin/env python3
"""Writes the seed corpus of the frame fuzz targets into corpus/<target>/.

Seeds are the literal frames the test suites send (found in tests/ and actors/src/), sorted to
their dialect by message type, plus one well-formed message of every kind each dialect knows,
shaped as the integration tests send them, in both SyncKit framings.
"""
import hashlib
import json
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent

POCKET = {"push", "pull", "auth"}
SYNCKIT = {"subscribe", "unsubscribe", "sync_request", "delta", "auth", "ping", "pong", "ack",
           "awareness_update", "awareness_subscribe"}
RELAY = {"update", "pull", "ping"}

SYNCKIT_CODES = {"auth": 0x01, "ping": 0x30, "pong": 0x31, "subscribe": 0x10,
                 "unsubscribe": 0x11, "sync_request": 0x12, "delta": 0x20, "ack": 0x21}


def from_tests():
    """Every complete JSON object literal with a "type" in the Rust sources of the tests."""
    found = []
    for path in list((REPO / "tests").rglob("*.rs")) + list((REPO / "actors/src").rglob("*.rs")):
        for m in re.finditer(r'r#"(\{"type".*?)"#', path.read_text(), re.S):
            text = m.group(1)
            try:
                msg = json.loads(text)
            except ValueError:
                continue
            found.append(msg)
    return found


def well_formed():
    pocket = [
        {"type": "push", "id": "p1", "timestamp": 1, "collection": "todos",
         "changes": [{"operation": "insert", "documentId": "a",
                      "document": {"_id": "a", "title": "x"}, "timestamp": 5},
                     {"operation": "update", "documentId": "a",
                      "document": {"_id": "a", "title": "y", "_version": 1}, "timestamp": 6},
                     {"operation": "delete", "documentId": "b", "document": None,
                      "timestamp": 7}],
         "checkpoint": {"sequences": {"todos": 3}}},
        {"type": "pull", "id": "q1", "timestamp": 1, "collections": ["todos"],
         "checkpoint": {"sequences": {"todos": 0}}, "limit": 100},
        {"type": "auth", "id": "a1", "timestamp": 1, "token": "t"},
    ]
    synckit = [
        {"type": "auth", "id": "1", "token": "t"},
        {"type": "subscribe", "id": "s", "documentId": "doc"},
        {"type": "sync_request", "id": "r", "documentId": "doc"},
        {"type": "delta", "id": "d", "documentId": "doc", "field": "title", "value": "x",
         "clock": {"alice": 3}, "clientId": "alice", "timestamp": 1000, "messageId": "m1"},
        {"type": "delta", "id": "d2", "documentId": "doc", "delta": {"a": 1, "b": [1, {"c": 2}]},
         "vectorClock": {"bob": 1}},
        {"type": "unsubscribe", "id": "u", "documentId": "doc"},
        {"type": "ping", "id": "p"},
    ]
    relay = [
        {"type": "update", "changes": [["todos", "1", "title", "x", 1, 1, "site", 1, 0],
                                       ["todos", "1", "-1", None, 1, 2, "site", 2, 0]],
         "version": 3, "siteId": "client", "channel": "c"},
        {"type": "pull", "version": 0},
        {"type": "ping"},
    ]
    return pocket, synckit, relay


def binary(msg):
    """A SyncKit binary frame: type code, timestamp (i64 BE), length (u32 BE), JSON body."""
    kind = msg.get("type", "")
    body = {k: v for k, v in msg.items() if k != "type"}
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (bytes([SYNCKIT_CODES.get(kind, 0x20)]) + struct.pack(">qI", 1000, len(payload))
            + payload)


def write(target, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    pocket, synckit, relay = well_formed()
    for msg in from_tests():
        kind = msg.get("type")
        if kind in POCKET or "collection" in msg or "collections" in msg:
            pocket.append(msg)
        if kind in SYNCKIT:
            synckit.append(msg)
        if kind in RELAY and "collections" not in msg:
            relay.append(msg)
    for msg in pocket:
        write("pocket_frames", json.dumps(msg).encode())
    for msg in synckit:
        write("synckit_frames", json.dumps(msg).encode())
        if msg.get("type") in SYNCKIT_CODES:
            write("synckit_frames", binary(msg))
    for msg in relay:
        write("relay_frames", json.dumps(msg).encode())
    for target in ("pocket_frames", "synckit_frames", "relay_frames"):
        print(target, len(list((ROOT / "corpus" / target).iterdir())), "inputs in the corpus")


if __name__ == "__main__":
    main()
