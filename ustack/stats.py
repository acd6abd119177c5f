"""Per-stack counters: every drop has a named reason (Linux `skb_drop_reason`)."""

from collections import Counter
from enum import StrEnum


class DropReason(StrEnum):
    VNET_TRUNCATED = "drop_vnet_truncated"  # shorter than its virtio-net header
    NOT_IPV4 = "drop_not_ipv4"
    IP_TRUNCATED = "drop_ip_truncated"
    IP_BAD_IHL = "drop_ip_bad_ihl"
    IP_BAD_LENGTH = "drop_ip_bad_length"
    IP_BAD_CHECKSUM = "drop_ip_bad_checksum"
    IP_NOT_OURS = "drop_ip_not_ours"
    IP_BAD_SOURCE = "drop_ip_bad_source"
    IP_SOURCE_ROUTED = "drop_ip_source_routed"
    IP_FRAGMENT_OVERLAP = "drop_ip_fragment_overlap"
    IP_FRAGMENT_LIMIT = "drop_ip_fragment_limit"
    IP_FRAGMENT_TIMEOUT = "drop_ip_fragment_timeout"
    IP_FRAGMENT_TOO_BIG = "drop_ip_fragment_too_big"
    IP_PROTO_UNSUPPORTED = "drop_ip_proto_unsupported"
    IP6_TRUNCATED = "drop_ip6_truncated"
    IP6_BAD_VERSION = "drop_ip6_bad_version"
    IP6_BAD_LENGTH = "drop_ip6_bad_length"
    IP6_MULTICAST = "drop_ip6_multicast"
    IP6_NOT_OURS = "drop_ip6_not_ours"
    IP6_BAD_SOURCE = "drop_ip6_bad_source"
    IP6_NO_NEXT_HEADER = "drop_ip6_no_next_header"
    IP6_UNKNOWN_OPTION = "drop_ip6_unknown_option"
    IP6_PARAMETER_PROBLEM = "drop_ip6_parameter_problem"
    IP6_CHAIN_TOO_LONG = "drop_ip6_chain_too_long"
    IP6_BAD_CHAIN = "drop_ip6_bad_chain"
    IP6_FRAGMENT_OVERLAP = "drop_ip6_fragment_overlap"
    IP6_FRAGMENT_LIMIT = "drop_ip6_fragment_limit"
    IP6_FRAGMENT_TIMEOUT = "drop_ip6_fragment_timeout"
    IP6_FRAGMENT_EMPTY = "drop_ip6_fragment_empty"
    IP6_SCOPE_MISMATCH = "drop_ip6_scope_mismatch"
    ICMP_MALFORMED = "drop_icmp_malformed"
    ICMP_BAD_CHECKSUM = "drop_icmp_bad_checksum"
    ICMP_IGNORED = "drop_icmp_ignored"
    ICMP_NO_CONNECTION = "drop_icmp_no_connection"  # an error quoting no connection of ours
    ICMP_OUT_OF_WINDOW = "drop_icmp_out_of_window"  # quoting no sequence in flight (RFC 5927)
    TCP_MALFORMED = "drop_tcp_malformed"
    TCP_BAD_CHECKSUM = "drop_tcp_bad_checksum"
    TCP_BAD_OPTIONS = "drop_tcp_bad_options"
    TCP_BAD_FLAGS = "drop_tcp_bad_flags"
    TCP_NO_LISTENER = "drop_tcp_no_listener"
    TCP_LISTEN_OVERFLOW = "drop_tcp_listen_overflow"
    TCP_BAD_COOKIE = "drop_tcp_bad_cookie"
    TCP_PAWS = "drop_tcp_paws"
    TCP_OOO_QUEUE_FULL = "drop_tcp_ooo_queue_full"
    TCP_NOT_ACCEPTABLE = "drop_tcp_not_acceptable"
    TCP_OUT_OF_ORDER = "drop_tcp_out_of_order"
    TCP_BAD_ACK = "drop_tcp_bad_ack"
    TCP_NO_ACK = "drop_tcp_no_ack"
    TCP_UNEXPECTED = "drop_tcp_unexpected"


class Counters(Counter[str]):
    """Monotonic named counters; `stats()` hands out a plain dict copy."""

    def drop(self, reason: DropReason) -> None:
        self[reason.value] += 1
        self["drops"] += 1
