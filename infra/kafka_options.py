"""kafka:// URLs -> the options of the Kafka event log and its librdkafka configurations.

    kafka://[user:password@]host:9092[,host2:9092...]/topic[?option=value&...]

Every option lives in the query string (docs/scale-out.md lists them all);
librdkafka settings without a named option pass through with a prefix:
`rdkafka.NAME` (every client), `producer.NAME` or `consumer.NAME` (one side).
The settings that make an acknowledgement mean "durable and in order" cannot
be overridden that way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from confluent_kafka import Message

from infra.errors import Invalid, Unavailable

#: librdkafka's own log lines, served by the clients' poll calls (not stderr).
RDKAFKA_LOG = logging.getLogger("chronicle.kafka.rdkafka")

#: Kafka's own rule for topic names.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")

#: Set by the adapter itself: durability, ordering, key placement, no group commits.
PROTECTED = frozenset(
    {
        "bootstrap.servers",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "max.in.flight.requests.per.connection",
        "partitioner",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "auto.offset.reset",
    }
)
#: librdkafka settings that a named option sets: the option, not the pass-through.
NAMED = {
    "group.id": "group_id or projector_group",
    "partition.assignment.strategy": "group_assignment",
    "session.timeout.ms": "group_session_timeout_ms",
}
_PASS_THROUGH = ("rdkafka.", "producer.", "consumer.")
_SECURITY_PROTOCOLS = {"plaintext", "ssl", "sasl_plaintext", "sasl_ssl"}
_COMPRESSIONS = {"none", "gzip", "snappy", "lz4", "zstd"}
_ASSIGNMENTS = {"range", "roundrobin", "cooperative-sticky"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """One kafka:// URL, parsed and checked. Defaults are the production-safe ones."""

    bootstrap: str
    topic: str
    partitions: int = 12
    replication: int = 3
    #: Topic config at creation; by default one less than the replication (>= 1).
    min_insync_replicas: int = 0
    create_topic: bool = True
    #: Bound on one append: well under a modality's DIMSE timeout (often 30-60 s).
    delivery_timeout_ms: int = 10_000
    #: Under load records group while earlier requests are in flight; a short
    #: linger adds to that at ~1 ms cost to a lone append.
    linger_ms: int = 1
    compression: str = "lz4"
    #: librdkafka's default and Kafka's default max.message.bytes (1048588) both fit it.
    message_max_bytes: int = 1_000_000
    #: Bound on metadata, topic creation, read() and end().
    timeout_ms: int = 5_000
    #: How long the broker may hold a fetch at the log end before answering:
    #: end() and read() wait for that answer, and nothing fetches between calls.
    fetch_wait_max_ms: int = 1
    client_id: str = "chronicle"
    #: The readers' group.id, for observability only: readers assign, never join.
    group_id: str = "chronicle"
    #: The consumer group projectors sharing one ClickHouse server join to split
    #: the partitions; empty: `chronicle-projector-<database>` (api/wiring.py).
    projector_group: str = ""
    #: How the group spreads partitions: range (eager: every rebalance pauses
    #: every projector briefly) or cooperative-sticky (only moved partitions pause).
    group_assignment: str = "range"
    #: A projector that stops heartbeating loses its partitions after this long.
    group_session_timeout_ms: int = 10_000
    security_protocol: str = ""
    sasl_mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    common: dict[str, str] = field(default_factory=dict)
    producer_extra: dict[str, str] = field(default_factory=dict)
    consumer_extra: dict[str, str] = field(default_factory=dict)

    @property
    def topic_config(self) -> dict[str, str]:
        """Unlimited retention (the log is the record) and no unclean leader election."""
        insync = self.min_insync_replicas or max(1, min(self.replication - 1, 2))
        return {
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "cleanup.policy": "delete",
            "min.insync.replicas": str(insync),
            "unclean.leader.election.enable": "false",
            # Kafka's default (1048588) for the default limit; follows a raised one.
            "max.message.bytes": str(self.message_max_bytes + 48_588),
        }

    def admin_config(self) -> dict[str, Any]:
        return {**self._base(), **self.common, "logger": RDKAFKA_LOG}

    def producer_config(self) -> dict[str, Any]:
        return {
            **self._base(),
            **self.common,
            **self.producer_extra,
            "enable.idempotence": True,
            "acks": "all",
            # Java's partitioner: every producer, in any language, puts a study
            # on the same partition.
            "partitioner": "murmur2_random",
            "delivery.timeout.ms": self.delivery_timeout_ms,
            "linger.ms": self.linger_ms,
            "compression.type": self.compression,
            "message.max.bytes": self.message_max_bytes,
        }

    def consumer_config(self) -> dict[str, Any]:
        return {
            **self._base(),
            **self.common,
            **self.consumer_extra,
            # Only for observability: offsets are never committed, projectors
            # keep their Positions beside their rows.
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
        }

    def group_config(self, group_id: str) -> dict[str, Any]:
        """A member that only holds partitions (infra/kafka_group.py): it never
        fetches them and commits nothing, whatever the pass-through settings say."""
        return {
            **self._base(),
            **self.common,
            **self.consumer_extra,
            "client.id": f"{self.client_id}-group",
            "group.id": group_id,
            "partition.assignment.strategy": self.group_assignment,
            "session.timeout.ms": self.group_session_timeout_ms,
            # Kafka's advice: heartbeats at most a third of the session timeout.
            "heartbeat.interval.ms": max(100, self.group_session_timeout_ms // 5),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "latest",
        }

    def _base(self) -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "client.id": self.client_id}
        if self.security_protocol:
            config["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.username:
            config["sasl.username"] = self.username
            config["sasl.password"] = self.password
        return config


def _int(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise Invalid(f"kafka URL option {name}={text!r} is not an integer") from None
        if not low <= value <= high:
            raise Invalid(f"kafka URL option {name}={value} must be in {low}..{high}")
        return value

    return parse


def _bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise Invalid(f"kafka URL option {name}={text!r} must be true or false")


def _choice(allowed: set[str]) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        if text.lower() not in allowed:
            raise Invalid(f"kafka URL option {name}={text!r}: expected one of {sorted(allowed)}")
        return text.lower()

    return parse


def _text(name: str, text: str) -> str:
    if not text:
        raise Invalid(f"kafka URL option {name} is empty")
    return text


_OPTIONS: dict[str, Callable[[str, str], object]] = {
    "partitions": _int(1, 100_000),
    "replication": _int(1, 32),
    "min_insync_replicas": _int(1, 32),
    "create_topic": _bool,
    "delivery_timeout_ms": _int(100, 300_000),
    "linger_ms": _int(0, 1_000),
    "compression": _choice(_COMPRESSIONS),
    "message_max_bytes": _int(1_000, 100_000_000),
    "timeout_ms": _int(100, 300_000),
    "fetch_wait_max_ms": _int(1, 1_000),
    "client_id": _text,
    "group_id": _text,
    "projector_group": _text,
    "group_assignment": _choice(_ASSIGNMENTS),
    "group_session_timeout_ms": _int(1_000, 3_600_000),
    "security_protocol": _choice(_SECURITY_PROTOCOLS),
    "sasl_mechanism": _text,
}


def position_of(message: Message) -> tuple[int, int]:
    """A delivered or fetched record's (partition, offset): librdkafka always sets both."""
    partition, offset = message.partition(), message.offset()
    if partition is None or offset is None:
        raise Unavailable(f"kafka record without partition or offset: {message.error()}")
    return partition, offset


def parse_kafka_url(url: str) -> KafkaOptions:
    """Check a kafka:// URL completely before anything connects."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka":
        raise Invalid(f"event log URL {url!r} is not a kafka:// URL")
    _, _, hosts = parts.netloc.rpartition("@")
    servers = hosts.split(",")
    if not hosts or not all(_HOST_PORT.fullmatch(s) for s in servers):
        raise Invalid(f"kafka URL {redacted(url)!r}: expected kafka://host:port[,host:port]/topic")
    topic = unquote(parts.path.removeprefix("/"))
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise Invalid(
            f"kafka URL {redacted(url)!r}: topic {topic!r} must be 1-249 of [A-Za-z0-9._-]"
        )
    if parts.fragment:
        raise Invalid(f"kafka URL {redacted(url)!r} takes no fragment")
    values: dict[str, Any] = {"bootstrap": ",".join(servers), "topic": topic}
    if parts.username:
        values["username"] = unquote(parts.username)
        values["password"] = unquote(parts.password or "")
    extras: dict[str, dict[str, str]] = {prefix: {} for prefix in _PASS_THROUGH}
    for name, text in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        prefix = next((p for p in _PASS_THROUGH if name.startswith(p)), None)
        if prefix is not None:
            extras[prefix][_librdkafka_name(name, prefix)] = text
        elif name in _OPTIONS:
            values[name] = _OPTIONS[name](name, text)
        else:
            raise Invalid(
                f"kafka URL option {name!r} is unknown: expected one of {sorted(_OPTIONS)}"
                f" or a prefixed librdkafka setting ({', '.join(_PASS_THROUGH)})"
            )
    values["common"] = extras["rdkafka."]
    values["producer_extra"] = extras["producer."]
    values["consumer_extra"] = extras["consumer."]
    options = KafkaOptions(**values)
    if options.min_insync_replicas > options.replication:
        raise Invalid(
            f"kafka URL: min_insync_replicas={options.min_insync_replicas} exceeds"
            f" replication={options.replication}: no append could ever succeed"
        )
    return options


def _librdkafka_name(name: str, prefix: str) -> str:
    setting = name.removeprefix(prefix)
    if not setting:
        raise Invalid(f"kafka URL option {name!r} names no librdkafka setting")
    if setting in PROTECTED:
        raise Invalid(
            f"kafka URL option {name!r}: {setting} is set by Chronicle"
            " (durable, ordered appends; no group commits) and cannot be overridden"
        )
    if setting in NAMED:
        raise Invalid(f"kafka URL option {name!r}: set {setting} with the option {NAMED[setting]}")
    return setting


def redacted(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
