"""The report: the side-by-side table, the scenarios' own lines, the profile by layer."""

from __future__ import annotations

import os


def fmt(v: float | None) -> str:
    if v is None:  # a figure that does not apply to this side (no TUN, no ustack counters)
        return "n/a"
    if isinstance(v, int):  # a count
        return str(v)
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def render_table(rep: dict) -> str:
    """A Markdown table; long failure reasons become numbered notes under it."""
    header = ["scenario", "unit", "ustack", "kernel", "ustack/kernel", "better"]
    body = []
    notes: list[str] = []

    def cell(value: float | None, error: str | None) -> str:
        if not error:
            return fmt(value)
        if error in notes:
            n = notes.index(error) + 1
        else:
            notes.append(error)
            n = len(notes)
        return f"FAILED ({error[:40]}{'...' if len(error) > 40 else ''}) [{n}]"

    for r in rep["rows"]:
        ratio = r["ratio_ustack_over_kernel"]
        body.append(
            [
                r["label"],
                r["unit"],
                cell(r["ustack"], r["ustack_error"]),
                cell(r["kernel"], r["kernel_error"]),
                "-" if ratio is None else f"{ratio:.3f}",
                r["better"],
            ]
        )
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    out += [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    out += [f"note: {r['note']}" for r in rep["rows"] if r.get("note")]
    return "\n".join(out)


def side_details(rep: dict, scenario: str) -> list[tuple[str, dict, dict]]:
    """(side, its detail, the row) for each side of `scenario`'s row that ran cleanly."""
    row = next((r for r in rep["rows"] if r["scenario"] == scenario), None)
    if row is None:
        return []
    return [(side, row[f"{side}_detail"], row) for side in ("ustack", "kernel")
            if not row[f"{side}_error"] and row[f"{side}_detail"]]


def print_churn(rep: dict) -> None:
    """The churn scenario's windows, side by side: the table has only first and last."""
    for side, d, _row in side_details(rep, "churn_rss"):
        print(
            f"churn {side}: req/s per {d['window_seconds']:g} s window "
            f"{[round(x) for x in d['windows']]}; RSS MB at start {d['rss_mb_start']:.1f}, "
            f"after each window {d['rss_mb_windows']}; {d['requests']} requests, "
            f"{d['failed']} failed"
        )


def print_closestorm(rep: dict) -> None:
    """The close storm's details per side, and ustack's whole counters line."""
    for side, d, row in side_details(rep, "closestorm"):
        text = (f"closestorm {side}: {d['connections']} close() calls in "
                f"{d['close_loop_s'] * 1000:.0f} ms, all closed after {row[side]:.2f} s "
                f"({d['polls']} looks at /proc/net/tcp, the last {d['last_poll_s'] * 1000:.0f}"
                f" ms); kernel TCP: {d['retrans_segs']} retransmissions, {d['tcp_timeouts']}"
                f" timeouts, {d['tcp_loss_probes']} tail loss probes")
        if "tun_tx_dropped" in d:
            text += f"; TUN drops {d['tun_tx_dropped']}"
        if "tcp_rto" in d:
            text += (f"; ustack tcp_rto {d['tcp_rto']}, tcp_spurious_rto "
                     f"{d['tcp_spurious_rto']} (stopped {d['settle_s']:g} s after the"
                     " client, the TUN quiet)")
        print(text)
        if d.get("ustack_stopped_line"):
            print(f"closestorm ustack server's last line: {d['ustack_stopped_line']}")


# Where a profiled function's own time belongs, by its file (built-ins count for their
# callers' files): the layers of ARCHITECTURE.md.
LAYERS = (
    ("TUN device I/O", ("ustack/tun.py",)),
    ("IPv4 and TCP headers, checksums", ("ustack/ip.py", "ustack/tcp/segment.py",
                                         "ustack/tcp/options.py", "ustack/checksum.py",
                                         "ustack/vnet.py", "ustack/host/network.py")),
    ("TCP core and host", ("ustack/tcp/", "ustack/host/")),
    ("driver and asyncio API", ("ustack/aio.py", "ustack/api/")),
    ("application (HTTP, echo)", ("ustack/services/", "httptools")),
    ("event loop (uvloop, waiting included)", ("asyncio/runners.py", "uvloop", "asyncio/")),
)


_STARTUP = ("compile", "builtins.exec", "marshal", "_imp.", "posix.stat", "__build_class__")


def profile_layers(stats: dict) -> dict[str, float]:
    """Own time per layer; the start-up (imports, compiling) is left out."""
    def layer_of(filename: str) -> str | None:
        if "importlib" in filename or filename.startswith("<"):
            return None
        for name, parts in LAYERS:
            if any(part in filename for part in parts):
                return name
        return "other"

    totals: dict[str, float] = {}
    for (filename, _, func), (_, _, own, _, callers) in stats.items():
        if filename == "~":  # a built-in: its time goes to whoever called it
            called = sum(c[2] for c in callers.values()) or 1.0
            for (cfile, _, _), c in callers.items():
                layer = layer_of(cfile)
                if layer is not None and not any(w in func for w in _STARTUP):
                    totals[layer] = totals.get(layer, 0.0) + own * c[2] / called
            continue
        layer = layer_of(filename)
        if layer is not None:
            totals[layer] = totals.get(layer, 0.0) + own
    return totals


def print_profile(path: str, top: int = 25) -> None:
    """Where ustack serve spent its time (cProfile): per layer, then the top functions."""
    import io
    import pstats

    if not os.path.exists(path):
        print(f"no profile in {path}: ustack serve did not exit normally")
        return
    stats = pstats.Stats(path)
    layers = profile_layers(stats.stats)  # type: ignore[attr-defined]
    total = sum(layers.values()) or 1.0
    print(f"\nustack serve profile ({path}): {total:.2f} s of own time (under cProfile)")
    for name, seconds in sorted(layers.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / total * 100:5.1f} %  {name}")
    out = io.StringIO()
    pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(top)
    print(f"top {top} functions by own time:")
    print(out.getvalue().split("\n", 4)[-1].rstrip())
