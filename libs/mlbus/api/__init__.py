"""Generated gRPC/protobuf stubs for mlbus's wire APIs -- do not edit below this package.

Everything under ``mlbus.api`` except this file is generated from the ``.proto``
sources in ``proto/mlbus/api/`` by ``tools/gen_proto.py`` with the pinned
grpcio-tools (``make proto``, i.e. ``python tools/gen_proto.py``), and committed:

- ``mlbus.api.inference.v2.grpc_predict_v2_pb2`` (+ ``.pyi``): messages of the
  Open Inference Protocol (KServe V2, wire-compatible with Triton), proto
  package ``inference``.
- ``mlbus.api.inference.v2.grpc_predict_v2_pb2_grpc``: the
  ``inference.GRPCInferenceService`` client stub, servicer base class and
  ``add_GRPCInferenceServiceServicer_to_server``.

To change an API, edit the ``.proto`` and run ``make proto``;
``tests/unit/test_proto_stubs.py`` fails when the committed stubs are stale.
The generated modules are excluded from ruff and from mypy errors, not from
the type checks of their callers.

Note: the messages live in the process-wide protobuf descriptor pool under
the ``inference.`` names, so this package cannot be imported in the same
process as ``tritonclient.grpc`` (which registers the same names).
"""
