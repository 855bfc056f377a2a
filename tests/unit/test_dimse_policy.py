"""Association acceptance decisions (api.dimse.policy), without a network."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import UID

from api.dimse.ae import _proposed_orders, accepted_transfer_syntaxes, prefer_requestor_order
from api.dimse.policy import (
    REASON_CALLED_AE_NOT_RECOGNISED,
    REASON_CALLING_AE_NOT_RECOGNISED,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    SOURCE_SERVICE_USER,
    AssociationPolicy,
    judge,
    resolve_host,
)
from infra.settings import RemoteAE, Settings


def _policy(
    *remotes: str, any_caller: bool = False, dns: dict[str, set[str]] | None = None
) -> AssociationPolicy:
    table = {name: frozenset(addresses) for name, addresses in (dns or {}).items()}
    return AssociationPolicy(
        ae_title="CHRONICLE",
        remotes=tuple(RemoteAE.parse(text) for text in remotes),
        accept_any_caller=any_caller,
        resolver=lambda host: table.get(host, frozenset()),
    )


def _decide(
    policy: AssociationPolicy, calling: str, peer: str = "10.0.0.5", called: str = "CHRONICLE"
) -> Any:
    return policy.decide(calling_ae=calling, called_ae=called, peer_ip=peer)


def test_without_remote_aes_any_caller_is_accepted() -> None:
    assert _decide(_policy(), "WHOEVER").accepted


def test_configured_caller_is_accepted_and_others_rejected_with_calling_reason() -> None:
    policy = _policy("MODALITY@10.0.0.5:104")
    assert _decide(policy, "MODALITY").accepted
    decision = _decide(policy, "STRANGER")
    assert not decision.accepted
    assert decision.rejection == (
        REJECTED_PERMANENT,
        SOURCE_SERVICE_USER,
        REASON_CALLING_AE_NOT_RECOGNISED,
    )


def test_accept_any_caller_overrides_the_list() -> None:
    assert _decide(_policy("MODALITY@10.0.0.5:104", any_caller=True), "STRANGER").accepted


def test_wrong_called_title_is_rejected_with_called_reason_even_for_known_callers() -> None:
    for policy in (_policy(), _policy("MODALITY@10.0.0.5:104")):
        decision = _decide(policy, "MODALITY", called="OTHER")
        assert decision.rejection == (
            REJECTED_PERMANENT,
            SOURCE_SERVICE_USER,
            REASON_CALLED_AE_NOT_RECOGNISED,
        )


def test_titles_compare_without_padding_and_case_sensitively() -> None:
    policy = _policy("MODALITY@10.0.0.5:104")
    assert _decide(policy, "MODALITY  ", called="CHRONICLE ").accepted
    assert not _decide(policy, "modality").accepted


def test_ip_host_binds_the_title_to_that_address() -> None:
    policy = _policy("MODALITY@10.0.0.5:104")
    assert _decide(policy, "MODALITY", peer="10.0.0.5").accepted
    assert _decide(policy, "MODALITY", peer="::ffff:10.0.0.5").accepted
    decision = _decide(policy, "MODALITY", peer="10.0.0.6")
    assert decision.reason == REASON_CALLING_AE_NOT_RECOGNISED
    assert "10.0.0.6" in decision.detail


def test_ipv6_host_compares_canonically() -> None:
    policy = _policy("MODALITY@2001:db8::1:104")
    assert _decide(policy, "MODALITY", peer="2001:0db8:0000::1").accepted
    assert not _decide(policy, "MODALITY", peer="2001:db8::2").accepted


def test_host_name_binds_when_it_resolves() -> None:
    policy = _policy("MODALITY@ct1.example:104", dns={"ct1.example": {"10.0.0.7", "10.0.0.8"}})
    assert _decide(policy, "MODALITY", peer="10.0.0.8").accepted
    assert not _decide(policy, "MODALITY", peer="10.0.0.9").accepted


def test_unresolvable_host_name_falls_back_to_the_title() -> None:
    policy = _policy("MODALITY@nowhere.invalid:104")
    assert _decide(policy, "MODALITY", peer="10.9.9.9").accepted


def test_wildcard_hosts_admit_any_address() -> None:
    for host in ("*", "0.0.0.0"):
        assert _decide(_policy(f"MODALITY@{host}:104"), "MODALITY", peer="192.0.2.1").accepted


def test_a_title_configured_for_two_hosts_admits_both() -> None:
    policy = _policy("MOVER@10.0.0.1:104", "MOVER@10.0.0.2:104")
    assert _decide(policy, "MOVER", peer="10.0.0.1").accepted
    assert _decide(policy, "MOVER", peer="10.0.0.2").accepted
    assert not _decide(policy, "MOVER", peer="10.0.0.3").accepted


def test_from_settings_reads_title_remotes_and_switch(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, ae_title="ARCHIVE", remote_aes=["A@127.0.0.1:1"], accept_any_caller=False
    )
    policy = AssociationPolicy.from_settings(settings)
    assert policy.ae_title == "ARCHIVE" and policy.restricts_callers
    assert _decide(policy, "A", peer="127.0.0.1", called="ARCHIVE").accepted
    assert not _decide(policy, "B", peer="127.0.0.1", called="ARCHIVE").accepted


def test_resolve_host_gives_addresses_or_nothing() -> None:
    assert "127.0.0.1" in resolve_host("127.0.0.1")
    assert resolve_host("host.invalid") == frozenset()


_titles = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16
)


@given(configured=st.lists(_titles, min_size=1, max_size=5, unique=True), calling=_titles)
def test_only_configured_titles_pass(configured: list[str], calling: str) -> None:
    policy = AssociationPolicy(
        ae_title="CHRONICLE",
        remotes=tuple(RemoteAE(title, "*", 104) for title in configured),
    )
    decision = _decide(policy, calling)
    assert decision.accepted == (calling in configured)
    if not decision.accepted:
        assert decision.reason == REASON_CALLING_AE_NOT_RECOGNISED


def _assoc(calling: str, called: str, address: str) -> Any:
    primitive = SimpleNamespace(calling_ae_title=calling, called_ae_title=called)
    return SimpleNamespace(requestor=SimpleNamespace(primitive=primitive, address=address, port=1))


def test_judge_reads_the_request_and_fails_closed() -> None:
    policy = _policy("MODALITY@10.0.0.5:104")
    assert judge(policy, _assoc("MODALITY", "CHRONICLE", "10.0.0.5")).accepted
    broken = SimpleNamespace(requestor=None)
    decision = judge(policy, broken)
    assert not decision.accepted and decision.result == REJECTED_TRANSIENT


# ------------------------------------------------ transfer syntax preference

ALL_SYNTAXES: list[str | bytes | UID] = [*accepted_transfer_syntaxes()]


def _cx(context_id: int, abstract: str, *syntaxes: str) -> Any:
    return SimpleNamespace(
        context_id=context_id, abstract_syntax=abstract, transfer_syntax=list(syntaxes)
    )


def test_proposed_orders_concatenate_contexts_in_id_order() -> None:
    orders = _proposed_orders([_cx(3, "A", "t3", "t1"), _cx(1, "A", "t1", "t2"), _cx(5, "B", "t9")])
    assert orders == {"A": ["t1", "t2", "t3"], "B": ["t9"]}


@pytest.mark.parametrize(
    ("proposed", "expected_first"),
    [
        (["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1"], "1.2.840.10008.1.2.4.90"),
        (["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"], "1.2.840.10008.1.2"),
        (["1.2.3.4.5.6", "1.2.840.10008.1.2.4.112"], "1.2.840.10008.1.2.4.112"),
    ],
)
def test_supported_list_is_rewritten_in_the_requestors_order(
    proposed: list[str], expected_first: str
) -> None:
    from pynetdicom.presentation import PresentationContext

    ours = PresentationContext()
    ours.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    ours.transfer_syntax = [*ALL_SYNTAXES]
    other = PresentationContext()
    other.abstract_syntax = "1.2.840.10008.1.1"
    other.transfer_syntax = [*ALL_SYNTAXES]
    before = list(other.transfer_syntax)
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(
            primitive=SimpleNamespace(
                presentation_context_definition_list=[_cx(1, str(ours.abstract_syntax), *proposed)]
            )
        ),
        acceptor=SimpleNamespace(supported_contexts=[ours, other]),
    )
    prefer_requestor_order(assoc)
    assert ours.transfer_syntax[0] == expected_first
    assert "1.2.3.4.5.6" not in ours.transfer_syntax
    assert other.transfer_syntax == before


def test_accepted_syntaxes_cover_the_families_and_leave_out_non_dimse_ones() -> None:
    syntaxes = set(accepted_transfer_syntaxes())
    for uid in (
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.94",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.204",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.8.1",
    ):
        assert uid in syntaxes, uid
    for uid in ("1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.6.1", "1.2.840.10008.1.20"):
        assert uid not in syntaxes, uid
