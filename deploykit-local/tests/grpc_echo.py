"""A real gRPC server and client (grpcio) for the proxy's gRPC test, without generated code:
the methods carry raw bytes.

  python3 grpc_echo.py server PORT NAME
      Serves /echo.Echo/Unary (answers NAME + ":" + the request), /echo.Echo/Stream (answers
      the request N times, N = its length, each as "<i>:" + request), and /echo.Echo/Fail
      (fails with NOT_FOUND and the request as details). Prints "ready" once listening.

  python3 grpc_echo.py client TARGET CALLS
      Through TARGET (host:port, plaintext HTTP/2): CALLS unary calls from 16 threads, then a
      server-streaming call, then a failing call; prints one JSON line with what came back.
"""

import concurrent.futures
import json
import sys

import grpc


def identity(b):
    return b


def serve(port, name):
    def unary(request, context):
        return name.encode() + b":" + request

    def stream(request, context):
        for i in range(len(request)):
            yield str(i).encode() + b":" + request

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
            "Stream": grpc.unary_stream_rpc_method_handler(stream, identity, identity),
            "Fail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
        },
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def client(target, calls):
    channel = grpc.insecure_channel(target)
    unary = channel.unary_unary("/echo.Echo/Unary", identity, identity)
    stream = channel.unary_stream("/echo.Echo/Stream", identity, identity)
    fail = channel.unary_unary("/echo.Echo/Fail", identity, identity)

    def one(i):
        try:
            return unary(b"call-%d" % i, timeout=20).decode()
        except grpc.RpcError as e:
            return "error %s: %s" % (e.code().name, e.details())

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(calls)))
    streamed = [m.decode() for m in stream(b"abcde", timeout=20)]
    try:
        fail(b"widget", timeout=20)
        failed = {"code": "OK"}
    except grpc.RpcError as e:
        failed = {"code": e.code().name, "details": e.details()}
    print(json.dumps({"unary": answers, "stream": streamed, "fail": failed}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        client(sys.argv[2], int(sys.argv[3]))
