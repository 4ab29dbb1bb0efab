"""From what the controller observed to the metrics ARCHITECTURE.md names, and the Gantt chart of one inference."""

from __future__ import annotations

from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import torch  # noqa: E402

from harness.analysis.intervals import median_interval, throughput_interval  # noqa: E402
from harness.loadgen.result import (GOODPUT_MIN_BYTES, GOODPUT_MIN_MS, RunResult, goodput_mbps,  # noqa: E402
                                    issue_hop_ms, latencies_ms, measured_seqs)
from harness.controller.traces import Trace  # noqa: E402
from harness.model.graph import ModelGraph  # noqa: E402
from harness.model.models import make_input  # noqa: E402


def latency_metrics(result: RunResult) -> dict[str, float]:
    """The measured latencies' mean, percentiles and spread, and the median hop from the controller to the first
    endpoint that they leave out (``issue_hop_ms``, where that endpoint said when its commands arrived)."""
    lat = latencies_ms(result)
    if not len(lat):
        return {}
    metrics = {"latency_ms": float(lat.mean()), "latency_p50_ms": float(np.percentile(lat, 50)),
               "latency_p90_ms": float(np.percentile(lat, 90)), "latency_p99_ms": float(np.percentile(lat, 99)),
               "latency_std_ms": float(lat.std())}
    hops = [issue_hop_ms(result, s) for s in measured_seqs(result) if s in result.received_ns]
    return {**metrics, "issue_hop_ms": float(np.median(hops))} if hops else metrics


def completion_gaps_s(result: RunResult) -> list[float]:
    """Emulated seconds between consecutive completions of the measured inferences, the first from the first
    issue: they add up to the window :func:`throughput_ips` divides by."""
    seqs = sorted(measured_seqs(result), key=lambda s: result.ends_ns[s])
    if not seqs:
        return []
    previous = min(result.starts_ns[s] for s in seqs)
    gaps = []
    for seq in seqs:
        gaps.append((result.ends_ns[seq] - previous) / 1e9 / result.tdf_of(seq))
        previous = result.ends_ns[seq]
    return gaps


def interval_metrics(result: RunResult) -> dict[str, float]:
    """95 % intervals over this run's inferences: the median latency's from order statistics, the throughput's by
    bootstrap (``harness.analysis.intervals``)."""
    lat, gaps = latencies_ms(result), completion_gaps_s(result)
    if not len(lat) or not gaps:
        return {}
    lat_low, lat_high = median_interval(list(lat))
    ips_low, ips_high = throughput_interval(gaps)
    return {"latency_p50_ms_ci_low": lat_low, "latency_p50_ms_ci_high": lat_high,
            "throughput_ips_ci_low": ips_low, "throughput_ips_ci_high": ips_high,
            "measured_inferences": float(len(lat))}


def throughput_ips(result: RunResult) -> float:
    """Measured inferences per emulated second over the measured window (first start to last end). A repeat with
    several in flight starts the measured phase over at one TDF, so the window is one TDF's."""
    seqs = measured_seqs(result)
    if not seqs:
        return float("nan")
    window_ns = max(result.ends_ns[s] for s in seqs) - min(result.starts_ns[s] for s in seqs)
    return len(seqs) / (window_ns / 1e9 / result.tdf_of(seqs[-1]))


def link_metrics(result: RunResult) -> dict[str, float]:
    """Bytes sent per measured inference and the bandwidth achieved by sends (sender start to receiver ACK)."""
    seqs = set(measured_seqs(result))
    sends = [s for s in result.spans if s["kind"] == "send" and s["seq"] in seqs]
    measured = max(1, len(seqs))
    total = sum(s.get("bytes", 0) for s in sends)
    busy_s = sum(s["end_ns"] - s["start_ns"] for s in sends) / 1e9
    out = {"bytes_transferred": total / measured}
    big = [s for s in sends if s.get("bytes", 0) >= 64 * 1024]  # small frames measure latency, not bandwidth
    if big:
        seconds = sum((s["end_ns"] - s["start_ns"]) / 1e9 / result.tdf_of(s["seq"]) for s in big)
        out["measured_bandwidth_mbps"] = goodput_mbps(sum(s["bytes"] for s in big), seconds)
    elif busy_s:
        seconds = sum((s["end_ns"] - s["start_ns"]) / 1e9 / result.tdf_of(s["seq"]) for s in sends)
        out["measured_bandwidth_mbps"] = goodput_mbps(total, seconds)
    if result.probe_mbps:
        out["probe_bandwidth_mbps"] = min(result.probe_mbps.values())
        # A plan that sends nothing still records what its link delivered: the probe before the run.
        out.setdefault("measured_bandwidth_mbps", out["probe_bandwidth_mbps"])
    return out


def emulated_interval(start_ns: int, end_ns: int, decisions: list[dict[str, Any]]) -> tuple[float, float]:
    """An interval of the controller's clock on a dynamic run's emulated time, placed from the last decision taken
    before it started (its stamp, emulated time and TDF: a new TDF is only ever set between inferences)."""
    anchor = max((d for d in decisions if d["at_ns"] <= start_ns), key=lambda d: d["at_ns"])
    start = anchor["emulated_s"] + (start_ns - anchor["at_ns"]) / 1e9 / anchor["tdf"]
    return start, start + (end_ns - start_ns) / 1e9 / anchor["tdf"]


def deliveries(spans: list[dict[str, Any]], seqs: set[int]) -> list[tuple[int, int, int]]:
    """Each transfer of inferences ``seqs`` as the link delivered it: (sender's first byte, receiver's last byte,
    bytes). A send's own span ends when its ACK is back at the sender, which adds the ACK's trip and the sending
    worker's wake-up (2-5 ms each on a loaded 2-core machine: 10-20 % of a 48 KiB transfer at 12-20 Mbit/s); the
    receiver's span ends when it has the tensor. A send is paired with the receipt of the same inference on its
    peer, in order (one connection per direction); one without a receipt keeps its own end."""
    receipts: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for span in spans:
        if span["kind"] == "recv" and span["seq"] in seqs:
            receipts.setdefault((span["seq"], span.get("peer", ""), span["endpoint"]), []).append(span)
    out = []
    for span in spans:
        if span["kind"] == "send" and span["seq"] in seqs:
            received = receipts.get((span["seq"], span["endpoint"], span.get("peer", "")), [])
            end_ns = received.pop(0)["end_ns"] if received else span["end_ns"]
            out.append((span["start_ns"], end_ns, span["bytes"]))
    return out


def trace_windows(trace: Trace, spans: list[dict[str, Any]], decisions: list[dict[str, Any]], seqs: set[int],
                  window_s: float = 1.0) -> list[dict[str, Any]]:
    """How closely the shaped link followed ``trace``: per window of ``window_s`` emulated seconds, the goodput of
    the transfers of inferences ``seqs`` (:func:`deliveries`; a transfer belongs to the window of its midpoint)
    against the rate the trace offered while they ran (its rate integrated over their intervals, so a step inside a
    transfer or a window counts for the time it held). The link is idle between inferences: only the time
    transfers were under way is compared. A window is ``measured`` only if its transfers carried at least
    ``GOODPUT_MIN_BYTES`` over at least ``GOODPUT_MIN_MS``; below that they measure delay and the bucket's burst,
    not the rate."""
    rows: dict[int, dict[str, Any]] = {}
    for start_ns, end_ns, nbytes in deliveries(spans, seqs):
        start, end = emulated_interval(start_ns, end_ns, decisions)
        index = int((start + end) / 2 // window_s)
        row = rows.setdefault(index, {"window_start_s": index * window_s, "window_end_s": (index + 1) * window_s,
                                      "transfers": 0, "bytes": 0, "busy_s": 0.0, "trace_mbit": 0.0})
        row["transfers"] += 1
        row["bytes"] += nbytes
        row["busy_s"] += end - start
        row["trace_mbit"] += trace.mbit_between(start, end)
    windows = []
    for row in (rows[i] for i in sorted(rows)):
        goodput, offered = goodput_mbps(row["bytes"], row["busy_s"]), row["trace_mbit"] / row["busy_s"]
        measured = row["bytes"] >= GOODPUT_MIN_BYTES and row["busy_s"] * 1e3 >= GOODPUT_MIN_MS
        windows.append({**{k: v for k, v in row.items() if k != "trace_mbit"}, "goodput_mbps": goodput,
                        "trace_mbps": offered, "ratio": goodput / offered, "measured": measured})
    return windows


def trace_following_metrics(windows: list[dict[str, Any]]) -> dict[str, float]:
    """Summary of :func:`trace_windows` over its measured windows only (windows whose sends carried too few bytes
    or lasted too briefly to measure a rate are left out): ``trace_windows_measured``, and the ratio of achieved
    goodput to the trace's rate, its median (``trace_goodput_ratio_median``) and the one farthest from 1
    (``trace_goodput_ratio_worst``)."""
    ratios = [w["ratio"] for w in windows if w["measured"]]
    if not ratios:
        return {"trace_windows_measured": 0.0}
    return {"trace_windows_measured": float(len(ratios)), "trace_goodput_ratio_median": float(np.median(ratios)),
            "trace_goodput_ratio_worst": max(ratios, key=lambda r: abs(r - 1))}


def compute_over_profile(result: RunResult) -> dict[str, float]:
    """Where compute ran unpadded (both endpoints this machine, or real boards): each endpoint's real compute over
    what its profile predicted for the same operations, median over the measured inferences. 1.0 means the profile
    holds; it is the compute half of a real run's measured / predicted latency."""
    seqs = set(measured_seqs(result))
    totals: dict[str, dict[int, list[float]]] = {}
    for s in result.spans:
        if s["kind"] == "compute" and s["seq"] in seqs and not s.get("budget_ms") and s.get("predicted_ms", 0) > 0:
            real_predicted = totals.setdefault(s["endpoint"], {}).setdefault(s["seq"], [0.0, 0.0])
            real_predicted[0] += (s["end_ns"] - s["start_ns"]) / 1e6
            real_predicted[1] += s["predicted_ms"]
    return {f"compute_over_profile_{endpoint}": float(np.median([r / p for r, p in by_seq.values()]))
            for endpoint, by_seq in sorted(totals.items())}


_COLORS = {"compute": "#4C72B0", "pad": "#A6BDDB", "send": "#DD8452", "recv": "#55A868"}


def timeline_figure(result: RunResult, seq: int | None = None, title: str = "") -> Any:
    """Gantt chart of one inference: a row per endpoint, compute/pad/send/recv spans in emulated ms."""
    if seq is None:
        measured = measured_seqs(result)
        seq = measured[len(measured) // 2] if measured else 0
    spans = [s for s in result.spans if s["seq"] == seq]
    start = result.starts_ns.get(seq, min((s["start_ns"] for s in spans), default=0))
    rows = sorted({s["endpoint"] for s in spans})
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.7 * len(rows)))
    for i, row in enumerate(rows):
        for s in (s for s in spans if s["endpoint"] == row):
            left = (s["start_ns"] - start) / 1e6 / result.tdf_of(seq)
            width = max((s["end_ns"] - s["start_ns"]) / 1e6 / result.tdf_of(seq), 1e-3)
            lane = {"send": 0.25, "recv": 0.25}.get(s["kind"], 0.0)
            ax.barh(i + lane, width, left=left, height=0.4, color=_COLORS.get(s["kind"], "grey"),
                    edgecolor="black", linewidth=0.3)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("emulated time since the inference was issued (ms)")
    ax.set_title(title or f"inference {seq}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _COLORS.values()]
    ax.legend(handles, list(_COLORS), loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=7, ncol=4,
              frameon=False)
    fig.tight_layout()
    return fig


def output_deviation(graph: ModelGraph, result: RunResult,
                     reference: Callable[[ModelGraph, int], torch.Tensor] | None = None) -> dict[str, float]:
    """The split outputs against the whole float32 model run here on the same inputs (``reference(graph, seq)``:
    that output, e.g. kept from an earlier job of a sweep on the same model): the largest absolute difference and,
    for a classifier's [N, classes] output, the share of inferences whose top-1 class agrees."""
    worst, agree, classified = 0.0, 0, 0
    with torch.no_grad():
        for seq, out in sorted(result.outputs.items()):
            ref = reference(graph, seq) if reference is not None else graph.module(make_input(graph.spec, seq))
            worst = max(worst, float((out - ref).abs().max()))
            if out.dim() == 2 and out.shape == ref.shape:
                classified += 1
                agree += bool(torch.equal(out.argmax(dim=1), ref.argmax(dim=1)))
    metrics = {"max_abs_error": worst}
    if classified:
        metrics["top1_agreement"] = agree / classified
    return metrics
