"""The load board sibling processes share (api.dimse.balance)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from api.dimse.balance import LoadBoard, SharedListener


def test_a_process_busier_than_a_sibling_knows_by_how_much() -> None:
    owner = LoadBoard.create(3)
    worker = LoadBoard(owner.fd, 3, 1)
    other = LoadBoard(owner.fd, 3, 2)
    assert owner.excess() == worker.excess() == 0
    owner.enter()
    owner.enter()
    worker.enter()
    assert owner.excess() == 2  # slot 2 is idle
    other.enter()
    assert owner.excess() == 1 and worker.excess() == 0 and other.excess() == 0
    owner.leave()
    owner.leave()
    owner.leave()  # never below zero
    assert owner.counts() == [0, 1, 1]


def test_the_owner_waits_for_every_worker_to_listen() -> None:
    owner = LoadBoard.create(3)
    assert owner.wait_ready(0.0) == [1, 2]
    LoadBoard(owner.fd, 3, 2).mark_ready()
    assert owner.wait_ready(0.0) == [1]
    LoadBoard(owner.fd, 3, 1).mark_ready()
    assert owner.wait_ready(1.0) == []


def test_a_slot_outside_the_board_is_refused() -> None:
    owner = LoadBoard.create(2)
    with pytest.raises(ValueError, match="slot 2"):
        LoadBoard(owner.fd, 2, 2)


def test_a_worker_process_sees_the_owners_socket_and_board() -> None:
    listener = SharedListener.open("127.0.0.1", 0, processes=2)
    listener.board.enter()
    port = listener.sock.getsockname()[1]
    child = (
        "from api.dimse.balance import SharedListener\n"
        "shared = SharedListener.from_env()\n"
        "assert shared is not None\n"
        "shared.board.enter(); shared.board.mark_ready()\n"
        "print(shared.sock.getsockname()[1], shared.board.counts())\n"
    )
    env = {**os.environ, **listener.env_for(1)}
    result = subprocess.run(
        [sys.executable, "-c", child],
        env=env,
        pass_fds=listener.fds,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.stdout.split()[0] == str(port)
    assert listener.board.counts() == [1, 1] and listener.board.wait_ready(0.0) == []
    listener.sock.close()


def test_without_the_owners_variables_there_is_no_shared_listener() -> None:
    assert SharedListener.from_env({}) is None


def test_a_worker_knows_when_it_ties_with_the_owner() -> None:
    owner = LoadBoard.create(2)
    worker = LoadBoard(owner.fd, 2, 1)
    assert worker.ties_with(0)
    owner.enter()
    assert not worker.ties_with(0)
    worker.enter()
    assert worker.ties_with(0) and owner.ties_with(1)
