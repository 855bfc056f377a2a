"""kafka:// URLs: every option, the durability settings no URL can weaken, clear refusals.

Pure: nothing here connects to a broker.
"""

from __future__ import annotations

import pytest

from infra.errors import Invalid
from infra.factory import open_event_log
from infra.kafka_options import NAMED, PROTECTED, KafkaOptions, parse_kafka_url


def test_defaults_are_the_production_safe_ones() -> None:
    options = parse_kafka_url("kafka://k1:9092,k2:9092,k3:9092/chronicle")
    assert options.bootstrap == "k1:9092,k2:9092,k3:9092"
    assert options.topic == "chronicle"
    assert (options.partitions, options.replication) == (12, 3)
    assert options.topic_config == {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "max.message.bytes": "1048588",
    }
    producer = options.producer_config()
    assert producer["enable.idempotence"] is True
    assert producer["acks"] == "all"
    assert producer["partitioner"] == "murmur2_random"
    assert producer["delivery.timeout.ms"] == 10_000
    assert producer["message.max.bytes"] == 1_000_000
    consumer = options.consumer_config()
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.partition.eof"] is True
    assert consumer["group.id"] == "chronicle"


def test_every_named_option_is_read() -> None:
    options = parse_kafka_url(
        "kafka://alice:s%40cret@k1:9093/site-a.events?partitions=24&replication=5"
        "&min_insync_replicas=3&create_topic=false&delivery_timeout_ms=5000&linger_ms=2"
        "&compression=zstd&message_max_bytes=2000000&timeout_ms=3000&fetch_wait_max_ms=20"
        "&client_id=ingest-7&group_id=projector-a&security_protocol=SASL_SSL"
        "&sasl_mechanism=SCRAM-SHA-512&projector_group=central-projectors"
        "&group_assignment=cooperative-sticky&group_session_timeout_ms=20000"
    )
    assert options == KafkaOptions(
        bootstrap="k1:9093",
        topic="site-a.events",
        partitions=24,
        replication=5,
        min_insync_replicas=3,
        create_topic=False,
        delivery_timeout_ms=5000,
        linger_ms=2,
        compression="zstd",
        message_max_bytes=2_000_000,
        timeout_ms=3000,
        fetch_wait_max_ms=20,
        client_id="ingest-7",
        group_id="projector-a",
        projector_group="central-projectors",
        group_assignment="cooperative-sticky",
        group_session_timeout_ms=20_000,
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-512",
        username="alice",
        password="s@cret",
    )
    config = options.producer_config()
    assert config["sasl.username"] == "alice" and config["sasl.password"] == "s@cret"
    assert config["security.protocol"] == "sasl_ssl"
    assert options.topic_config["min.insync.replicas"] == "3"
    assert options.topic_config["max.message.bytes"] == str(2_000_000 + 48_588)
    assert "s@cret" not in repr(options)


@pytest.mark.parametrize(("replication", "insync"), [(1, "1"), (2, "1"), (3, "2"), (5, "2")])
def test_min_insync_replicas_defaults_below_the_replication(replication: int, insync: str) -> None:
    options = parse_kafka_url(f"kafka://k:9092/t?replication={replication}")
    assert options.topic_config["min.insync.replicas"] == insync


def test_prefixed_librdkafka_settings_pass_through_to_their_clients() -> None:
    options = parse_kafka_url(
        "kafka://k:9092/t?rdkafka.ssl.ca.location=/etc/ca.pem"
        "&producer.batch.size=65536&consumer.fetch.max.bytes=1048576"
    )
    producer, consumer, admin = (
        options.producer_config(),
        options.consumer_config(),
        options.admin_config(),
    )
    assert producer["ssl.ca.location"] == consumer["ssl.ca.location"] == "/etc/ca.pem"
    assert admin["ssl.ca.location"] == "/etc/ca.pem"
    assert producer["batch.size"] == "65536" and "batch.size" not in consumer
    assert consumer["fetch.max.bytes"] == "1048576" and "fetch.max.bytes" not in producer


@pytest.mark.parametrize("setting", sorted(PROTECTED))
def test_durability_and_placement_settings_cannot_be_overridden(setting: str) -> None:
    for prefix in ("rdkafka.", "producer.", "consumer."):
        with pytest.raises(Invalid, match="cannot be overridden"):
            parse_kafka_url(f"kafka://k:9092/t?{prefix}{setting}=x")


def test_a_projector_group_member_holds_partitions_and_commits_nothing() -> None:
    options = parse_kafka_url("kafka://k:9092/t?consumer.fetch.max.bytes=1048576")
    assert (options.projector_group, options.group_assignment) == ("", "range")
    member = options.group_config("chronicle-projector-chronicle")
    assert member["group.id"] == "chronicle-projector-chronicle"
    assert member["enable.auto.commit"] is False and member["enable.auto.offset.store"] is False
    assert member["partition.assignment.strategy"] == "range"
    assert member["session.timeout.ms"] == 10_000 and member["heartbeat.interval.ms"] == 2_000
    assert member["fetch.max.bytes"] == "1048576", "pass-through settings reach the member"
    assert options.consumer_config()["group.id"] == "chronicle", "readers keep group_id"


@pytest.mark.parametrize("setting", sorted(NAMED))
def test_group_settings_go_through_their_named_options(setting: str) -> None:
    with pytest.raises(Invalid, match=f"with the option {NAMED[setting]}"):
        parse_kafka_url(f"kafka://k:9092/t?consumer.{setting}=x")


@pytest.mark.parametrize(
    "url",
    [
        "kafka://k:9092/",
        "kafka://k:9092/a/b",
        "kafka://k:9092/" + "t" * 250,
        "kafka://k:9092/..",
        "kafka:///topic",
        "kafka://k/topic",
        "kafka://k:9092,/topic",
        "kafka://k:9092/t#frag",
        "kafka://k:9092/t?partitions=0",
        "kafka://k:9092/t?partitions=many",
        "kafka://k:9092/t?replication=3&min_insync_replicas=4",
        "kafka://k:9092/t?create_topic=maybe",
        "kafka://k:9092/t?compression=brotli",
        "kafka://k:9092/t?security_protocol=tls",
        "kafka://k:9092/t?delivery_timeout_ms=10",
        "kafka://k:9092/t?client_id=",
        "kafka://k:9092/t?partition=3",
        "kafka://k:9092/t?rdkafka.=1",
        "kafka://k:9092/t?group_assignment=sticky",
        "kafka://k:9092/t?group_session_timeout_ms=10",
        "kafka://k:9092/t?projector_group=",
    ],
)
def test_malformed_urls_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(Invalid):
        open_event_log(url)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(Invalid) as refused:
        parse_kafka_url("kafka://alice:hunter2@k:9092/bad/topic")
    assert "hunter2" not in str(refused.value)
    assert "alice:***@" in str(refused.value)
