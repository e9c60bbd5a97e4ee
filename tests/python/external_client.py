#!/usr/bin/env python3
"""An external gRPC client of a running media plane, written only from the .proto contract.

Usage: external_client.py HOST:PORT

It generates Python stubs from proto/proto/media/v1/media.proto with grpc_tools.protoc into a
temporary directory, checks that server reflection lists media.v1.MediaPlane, then creates two
legs (A latching, B sending to a local UDP socket) and a bridge, relays 50 RTP packets from a UDP
socket through A to B, checks the sequence numbers, the bytes and GetStats, and deletes the legs.

Exit status 0 on success; 1 with a message on stderr otherwise. Every wait is bounded: RPCs time
out after 5 s, UDP reads after 2 s.

Needs: grpcio, grpcio-tools, grpcio-reflection (pip install grpcio grpcio-tools grpcio-reflection).
"""

import socket
import struct
import subprocess
import sys
import tempfile

import grpc

from stubs import Failure, check, generate_stubs

SERVICE = "media.v1.MediaPlane"
RPC_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
UDP_TIMEOUT = 2.0
PACKETS = 50
BURST = 10
FIRST_SEQ = 65_530  # the run crosses the 16-bit sequence number wrap
SSRC = 0x5059_7468
PAYLOAD = 160


def reflection_check(channel):
    """Lists services over server reflection (v1, else v1alpha) and fetches MediaPlane's descriptor.

    grpcio-reflection ships the v1alpha messages only; v1's are identical on the wire, so they
    serialise requests to the v1 method as well.
    """
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    for method in (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        try:
            responses = list(call(iter(requests), timeout=RPC_TIMEOUT))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            raise
        check(len(responses) == 2, f"reflection ({method}): {len(responses)} responses to 2 requests")
        listed = [s.name for s in responses[0].list_services_response.service]
        check(SERVICE in listed, f"reflection ({method}) lists {listed}, not {SERVICE}")
        methods = set()
        for raw in responses[1].file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for svc in fd.service:
                if f"{fd.package}.{svc.name}" == SERVICE:
                    methods.update(m.name for m in svc.method)
        expected = {"CreateLeg", "UpdateLeg", "DeleteLeg", "CreateBridge", "DeleteBridge", "GetStats", "Events"}
        check(expected <= methods, f"reflection describes {SERVICE} with methods {sorted(methods)}")
        return method.split("/")[1], listed
    raise Failure("server reflection is not served (neither v1 nor v1alpha)")


def rtp(seq, payload_len=PAYLOAD):
    header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, SSRC)
    return header + bytes(((i * 31 + seq) & 0xFF) for i in range(payload_len))


def udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(UDP_TIMEOUT)
    return s


def addr(endpoint):
    return (endpoint.ip, endpoint.port)


def relay(sock_a, to_a, sock_b, from_b):
    """Sends PACKETS RTP packets to A in bursts; returns the bytes sent after checking arrival at B."""
    sent_bytes = 0
    seqs = [(FIRST_SEQ + i) & 0xFFFF for i in range(PACKETS)]
    for start in range(0, PACKETS, BURST):
        burst = [rtp(s) for s in seqs[start:start + BURST]]
        for p in burst:
            sock_a.sendto(p, to_a)
            sent_bytes += len(p)
        for p in burst:
            want = struct.unpack("!H", p[2:4])[0]
            try:
                data, src = sock_b.recvfrom(4096)
            except socket.timeout:
                raise Failure(f"RTP seq {want}: nothing reached B's remote within {UDP_TIMEOUT} s") from None
            got = struct.unpack("!H", data[2:4])[0] if len(data) >= 4 else None
            check(got == want, f"expected RTP seq {want} at B, got {got}")
            check(data == p, f"RTP seq {want} was changed in transit")
            check(src == from_b, f"RTP seq {want} came from {src}, not B's local address {from_b}")
    return sent_bytes


def run(target):
    with tempfile.TemporaryDirectory(prefix="media-plane-stubs-") as tmp:
        pb2, pb2_grpc = generate_stubs(tmp, "media/v1", "media")
        channel = grpc.insecure_channel(target)
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise Failure(f"no gRPC connection to {target} within {CONNECT_TIMEOUT} s") from None
        with channel:
            reflection_api, services = reflection_check(channel)
            stub = pb2_grpc.MediaPlaneStub(channel)
            sock_a, sock_b = udp_socket(), udp_socket()
            legs = []
            try:
                a = stub.CreateLeg(pb2.CreateLegRequest(call_id="python-call"), timeout=RPC_TIMEOUT)
                legs.append(a.leg_id)
                b_remote = pb2.Endpoint(ip="127.0.0.1", port=sock_b.getsockname()[1])
                b = stub.CreateLeg(pb2.CreateLegRequest(call_id="python-call", remote=b_remote), timeout=RPC_TIMEOUT)
                legs.append(b.leg_id)
                check(a.core == b.core, f"legs of one call_id on cores {a.core} and {b.core}")
                bridge = stub.CreateBridge(pb2.CreateBridgeRequest(leg_a=a.leg_id, leg_b=b.leg_id), timeout=RPC_TIMEOUT)

                sent = relay(sock_a, addr(a.local), sock_b, addr(b.local))

                st = stub.GetStats(pb2.GetStatsRequest(leg_ids=[a.leg_id, b.leg_id]), timeout=RPC_TIMEOUT)
                by_id = {leg.leg_id: leg for leg in st.legs}
                check(set(by_id) == {a.leg_id, b.leg_id}, f"GetStats listed legs {sorted(by_id)}")
                sa, sb = by_id[a.leg_id], by_id[b.leg_id]
                check((sa.rtp_packets_in, sa.rtp_bytes_in) == (PACKETS, sent),
                      f"leg A rtp in: {sa.rtp_packets_in} packets / {sa.rtp_bytes_in} bytes, want {PACKETS} / {sent}")
                check((sb.rtp_packets_out, sb.rtp_bytes_out) == (PACKETS, sent),
                      f"leg B rtp out: {sb.rtp_packets_out} packets / {sb.rtp_bytes_out} bytes, want {PACKETS} / {sent}")
                check(sa.latched and addr(sa.remote) == sock_a.getsockname(),
                      f"leg A latched={sa.latched} onto {addr(sa.remote)}, want {sock_a.getsockname()}")
                check(sa.bridge_id == bridge.bridge_id == sb.bridge_id, "legs not in the bridge GetStats reports")
                for leg in (sa, sb):
                    d = leg.drops
                    check(d.malformed == d.wrong_source == d.no_route == d.muted == d.send_failed == 0,
                          f"leg {leg.leg_id} dropped packets: {d}")
                core = next(c for c in st.cores if c.core == a.core)
                check(core.legs == 2 and core.bridges == 1, f"core {a.core}: {core.legs} legs, {core.bridges} bridges")

                for leg_id in list(legs):
                    final = stub.DeleteLeg(pb2.DeleteLegRequest(leg_id=leg_id), timeout=RPC_TIMEOUT)
                    legs.remove(leg_id)
                    check(final.stats.leg_id == leg_id, f"DeleteLeg {leg_id} returned stats of {final.stats.leg_id}")
                try:
                    stub.DeleteLeg(pb2.DeleteLegRequest(leg_id=a.leg_id), timeout=RPC_TIMEOUT)
                    raise Failure("deleting a deleted leg succeeded")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.NOT_FOUND, f"deleting a deleted leg: {e.code()}, want NOT_FOUND")
                st = stub.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT)
                check(not [leg.leg_id for leg in st.legs if leg.leg_id in (a.leg_id, b.leg_id)], "deleted legs still listed")
            finally:
                for leg_id in legs:  # best effort after a failure
                    try:
                        stub.DeleteLeg(pb2.DeleteLegRequest(leg_id=leg_id), timeout=RPC_TIMEOUT)
                    except grpc.RpcError:
                        pass
                sock_a.close()
                sock_b.close()
    print(f"external_client: ok: reflection ({reflection_api}) lists {', '.join(services)}; "
          f"{PACKETS} RTP packets relayed A->B with sequence numbers intact; stats and deletes checked")


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    try:
        run(argv[1])
    except Failure as e:
        print(f"external_client: FAIL: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"external_client: FAIL: RPC error {e.code()}: {e.details()}", file=sys.stderr)
        return 1
    except (OSError, subprocess.SubprocessError, ImportError) as e:
        print(f"external_client: FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
