"""TLS on the traffic controller's gRPC endpoint, with real processes: the controller serves
with a certificate laid out like a mounted kubernetes.io/tls Secret; unary and Session
clients and an agent's load reporter reach it by trusting the CA; a plaintext client or one
trusting another CA is refused; a rotated certificate is served without a restart (a bad pair
is refused and the old one kept); bad TLS files stop the controller at startup, naming them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from dualpath_agent.launch import start_agent
from dualpath_controller.client import ControllerClient, ControllerSession
from dualpath_controller.process import ControllerProcess

from tests.support.certs import write_tls_secret
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tls_secret(tmp_path_factory.mktemp("tls"), ["localhost"], ["127.0.0.1"])


@pytest.fixture(scope="module")
def tls_controller(secret: Path):  # type: ignore[no-untyped-def]
    args = ["--tls-cert-file", str(secret / "tls.crt"), "--tls-key-file", str(secret / "tls.key")]
    proc = ControllerProcess(report_interval_ms=100, extra_args=args).start()
    yield proc
    proc.stop()


def test_clients_that_trust_the_ca_are_served(tls_controller, secret):
    with ControllerClient(tls_controller.target, tls_ca=secret / "ca.crt") as client:
        client.wait_ready(10)
        client.register_engine("p0", "prefill", "pn0")
        client.register_engine("d0", "decode", "dn0", hbm_capacity_tokens=1_000_000)
        reply = client.schedule("tls-1", 1_000, 900, 100)
        assert reply.assignment.request_id == "tls-1"
        with ControllerSession(tls_controller.target, tls_ca=secret) as session:  # a directory
            assert session.schedule("tls-2", 1_000, 900, 100).assignment.request_id == "tls-2"
            assert session.complete("tls-2")
        assert client.complete("tls-1")


def test_plaintext_and_untrusting_clients_are_refused(tls_controller, tmp_path):
    stranger = write_tls_secret(tmp_path / "other", ["localhost"], ["127.0.0.1"], "other-ca")
    for trust in (None, stranger / "ca.crt"):
        with ControllerClient(tls_controller.target, tls_ca=trust, timeout_s=2) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.status()
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, trust


def test_an_agent_reports_load_over_tls(tls_controller, secret, tmp_path):
    agent = start_agent(
        "tls-node",
        "decode",
        tmp_path / "store",
        tmp_path,
        [
            "--controller",
            tls_controller.target,
            "--controller-tls-ca",
            str(secret),
            "--engine",
            "tls-node/gpu0",
        ],
    )
    try:
        with ControllerClient(tls_controller.target, tls_ca=secret) as client:
            wait_for(
                "the agent's engine registered over TLS",
                lambda: any(e.engine.engine_id == "tls-node/gpu0" for e in client.status().engines),
                15,
                explain=agent.log_tail,
            )
    finally:
        agent.stop()


def test_bad_tls_files_stop_the_controller_and_name_the_file(secret, tmp_path):
    missing = tmp_path / "nope.key"
    proc = ControllerProcess(
        extra_args=["--tls-cert-file", str(secret / "tls.crt"), "--tls-key-file", str(missing)]
    )
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        proc.start()
    assert str(missing) in str(info.value)
    half = ControllerProcess(extra_args=["--tls-cert-file", str(secret / "tls.crt")])
    with pytest.raises(RuntimeError, match="both a certificate and a key"):
        half.start()
    not_pem = tmp_path / "garbage.crt"
    not_pem.write_text("hello")
    command = [sys.executable, "-m", "dualpath_cli.main", "agent", "--node", "x"]
    command += ["--role", "decode", "--store", str(tmp_path / "s")]
    command += ["--controller", "127.0.0.1:1", "--controller-tls-ca", str(not_pem)]
    agent = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 2 and f"{not_pem}: not a PEM file" in agent.stderr


def _swap_in(source: Path, live: Path, names: tuple[str, ...] = ("tls.crt", "tls.key")) -> None:
    """Replace files the way the kubelet updates a mounted Secret: new files, then a rename."""
    for name in names:
        shutil.copy(source / name, live / f".{name}.new")
        os.replace(live / f".{name}.new", live / name)


def _reloads(proc: ControllerProcess) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("dualpath_controller_tls_certificate_reloads_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def _served(target: str, trust: Path) -> bool:
    with ControllerClient(target, tls_ca=trust, timeout_s=3) as client:
        try:
            client.status()
            return True
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            return False


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path):
    first = write_tls_secret(tmp_path / "first", ["localhost"], ["127.0.0.1"], "first-ca")
    second = write_tls_secret(tmp_path / "second", ["localhost"], ["127.0.0.1"], "second-ca")
    live = tmp_path / "live"
    shutil.copytree(first, live)
    args = ["--tls-cert-file", str(live / "tls.crt"), "--tls-key-file", str(live / "tls.key")]
    proc = ControllerProcess(extra_args=args).start()
    try:
        assert _served(proc.target, first / "ca.crt")
        _swap_in(second, live)
        assert _served(proc.target, second / "ca.crt")  # a new connection, the new cert
        assert not _served(proc.target, first / "ca.crt")
        assert _reloads(proc).get("reloaded") == 1
        # Half a rotation (the first certificate with the second key): kept the current pair.
        _swap_in(first, live, ("tls.crt",))
        assert _served(proc.target, second / "ca.crt")
        assert _reloads(proc).get("rejected") == 1
        assert proc.proc is not None and proc.proc.poll() is None
        assert "TLS certificate not reloaded" in proc.log_text()
    finally:
        proc.stop()
