"""The zygote's socket: one zygote per path, and a dead zygote's socket does not block the next."""

from __future__ import annotations

import socket

import pytest

from deployments.runtime.zygote import Zygote


def test_zygote_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path):
    path = str(tmp_path / "z.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a killed zygote leaves behind
    stale.close()
    first = Zygote(path)
    first.listen()
    try:
        with pytest.raises(SystemExit, match="another zygote"):
            Zygote(path).check_free()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)  # the first zygote is the one listening there
        probe.close()
    finally:
        first.close()
