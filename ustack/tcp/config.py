"""Per-connection settings: what a user knows as socket options."""

from dataclasses import dataclass

DEFAULT_MSL = 30.0  # seconds; TIME-WAIT lasts 2 x MSL (RFC 9293 §3.4.2, MUST-13)
DEFAULT_RCV_BUF = 256 * 1024  # the receive buffer a connection starts with ...
MAX_RCV_BUF = 6 * 1024 * 1024  # ... and the most autotuning grows it to (tcp_rmem[2])
DEFAULT_SND_BUF = 256 * 1024  # the send buffer it starts with ...
MAX_SND_BUF = 4 * 1024 * 1024  # ... and the most it grows to (Linux tcp_wmem[2])
# RFC 9293 §3.8.3: R2 for data at least 100 s (MUST-20), for a SYN at least 3 min (MUST-23).
DATA_RETRIES = 15  # Linux tcp_retries2: about 15 minutes at the 60 s maximum RTO
SYN_RETRIES = 7  # 1+2+4+…+64 s: 255 s of SYN retransmission before giving up
DELAYED_ACK = 0.04  # MUST-40 allows < 0.5 s; Linux's minimum ATO is 40 ms
FIN_WAIT_2_TIMEOUT = 60.0  # Linux tcp_fin_timeout, for connections the user has closed


@dataclass(slots=True)
class TcpConfig:
    # Buffers (SO_RCVBUF/SO_SNDBUF, autotuned as Linux's tcp_rmem/tcp_wmem: see
    # ustack.tcp.autotune): the sizes a connection starts with and the most they grow to.
    rcv_buf: int = DEFAULT_RCV_BUF
    rcv_buf_max: int = MAX_RCV_BUF
    snd_buf: int = DEFAULT_SND_BUF
    snd_buf_max: int = MAX_SND_BUF
    msl: float = DEFAULT_MSL
    nodelay: bool = False  # Nagle on (RFC 9293 §3.7.4) unless asked otherwise
    window_scaling: bool = True  # RFC 7323 §2
    timestamps: bool = True  # RFC 7323 §3
    sack: bool = True  # RFC 2018
    congestion: str = "cubic"  # RFC 9438; or "newreno" (RFC 5681, RFC 6582)
    # RACK-TLP loss detection (RFC 8985) where SACK and timestamps are on; off, or
    # without them, RFC 6675's duplicate count (NewReno without SACK).
    rack: bool = True
    pacing: bool = True  # spread each window over the RTT (ustack.tcp.pacing)
    max_retries: int = DATA_RETRIES
    syn_retries: int = SYN_RETRIES
    delayed_ack: float = DELAYED_ACK
    # Keepalive: off by default (MUST-24/25); idle at least two hours by default (MUST-28).
    keepalive: bool = False
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
