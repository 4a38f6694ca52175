"""Generated files must match their sources."""

from __future__ import annotations

from dualpath_cli.codegen import stale_protos


def test_grpc_stubs_are_up_to_date():
    stale = stale_protos()
    assert not stale, f"stale gRPC stubs {stale}: run `make protos` and commit"
