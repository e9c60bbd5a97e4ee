#!/usr/bin/env python3
"""A click-to-dial application on the control plane's control.v1 API, written only from the
.proto contract: the example of the README's "Call control API" section, run by the tests.

Usage: call_control.py HOST:PORT FROM TO

It generates Python stubs from proto/proto/control/v1/control.proto with grpc_tools.protoc into a
temporary directory, then:

1. sets FROM's call settings over the Admin service and reads them back; a bad key is refused
   with INVALID_ARGUMENT naming it;
2. watches call events (WatchCalls, in a thread) and places a call from FROM to TO (Originate);
3. waits until both parties answered, checks ListCalls shows the call answered, hangs it up
   (Hangup), and waits for its Ended event (cause "hangup");
4. prints one JSON line with the events seen.

Exit status 0 on success; 1 with a message on stderr otherwise. Every wait is bounded: RPCs time
out after 5 s, the call must be answered within 20 s.

Needs: grpcio, grpcio-tools (pip install grpcio grpcio-tools).
"""

import json
import queue
import sys
import tempfile
import threading
import time

import grpc

from stubs import Failure, check, generate_stubs

RPC_TIMEOUT = 5.0
ANSWER_TIMEOUT = 20.0


def settings_round_trip(pb2, admin, subscriber):
    reply = admin.SetSettings(
        pb2.SetSettingsRequest(subscriber=subscriber, set={"e164": "+4930123456", "forward.no_answer_s": "25"}),
        timeout=RPC_TIMEOUT,
    )
    got = json.loads(reply.json)
    check(got.get("e164") == "+4930123456", f"SetSettings answered {reply.json}")
    read = json.loads(admin.GetSettings(pb2.GetSettingsRequest(subscriber=subscriber), timeout=RPC_TIMEOUT).json)
    check(read == got, f"GetSettings {read} differs from what was set {got}")
    try:
        admin.SetSettings(pb2.SetSettingsRequest(subscriber=subscriber, set={"forward.colour": "blue"}), timeout=RPC_TIMEOUT)
        raise Failure("a bad key was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"a bad key got {e.code()}")
        check("forward.colour" in e.details(), f"the error does not name the key: {e.details()}")
    # Back to no settings, so the call below is not forwarded.
    admin.SetSettings(pb2.SetSettingsRequest(subscriber=subscriber, clear=True), timeout=RPC_TIMEOUT)


def watch(stub, pb2, events, ready):
    stream = stub.WatchCalls(pb2.WatchCallsRequest())
    ready.set()
    try:
        for event in stream:
            events.put(event)
    except grpc.RpcError:
        pass


def wait_for(events, seen, call_id, kind, deadline):
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if event.call_id != call_id:
            continue
        which = event.WhichOneof("event")
        seen.append(which if which not in ("ringing", "answered") else f"{which}:{getattr(event, which).party}")
        if kind(event):
            return event
    raise Failure(f"no matching event for call {call_id}; saw {seen}")


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    target, first, second = sys.argv[1:]
    with tempfile.TemporaryDirectory() as out:
        pb2, pb2_grpc = generate_stubs(out, "control/v1", "control")
        channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(channel).result(timeout=10)
        calls = pb2_grpc.CallControlStub(channel)
        admin = pb2_grpc.AdminStub(channel)

        settings_round_trip(pb2, admin, f"{first}@sip.test")

        events, ready, seen = queue.Queue(), threading.Event(), []
        threading.Thread(target=watch, args=(calls, pb2, events, ready), daemon=True).start()
        check(ready.wait(5), "WatchCalls did not start")
        time.sleep(0.2)

        call_id = calls.Originate(pb2.OriginateRequest(**{"from": first, "to": second}), timeout=RPC_TIMEOUT).call_id
        deadline = time.monotonic() + ANSWER_TIMEOUT
        wait_for(events, seen, call_id, lambda e: e.WhichOneof("event") == "answered" and e.answered.party == 2, deadline)

        listed = [c for c in calls.ListCalls(pb2.ListCallsRequest(), timeout=RPC_TIMEOUT).calls if c.call_id == call_id]
        check(len(listed) == 1, f"ListCalls does not show call {call_id}")
        check(listed[0].state == pb2.CALL_STATE_ANSWERED and listed[0].originated, f"ListCalls shows {listed[0]}")

        time.sleep(1.0)
        calls.Hangup(pb2.HangupRequest(call_id=call_id), timeout=RPC_TIMEOUT)
        ended = wait_for(events, seen, call_id, lambda e: e.WhichOneof("event") == "ended", time.monotonic() + 5)
        check(ended.ended.cause == "hangup" and ended.ended.status == 200, f"ended {ended.ended}")
        check(ended.ended.duration_ms >= 900, f"answered for {ended.ended.duration_ms} ms")
        try:
            calls.Hangup(pb2.HangupRequest(call_id=call_id), timeout=RPC_TIMEOUT)
            raise Failure("a second Hangup found the call")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"a second Hangup got {e.code()}")
        print(json.dumps({"call_id": call_id, "events": seen, "duration_ms": ended.ended.duration_ms}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Failure, grpc.RpcError, grpc.FutureTimeoutError) as e:
        print(f"call_control.py: {e}", file=sys.stderr)
        sys.exit(1)
