"""One experiment, end to end: config -> model graph -> costs -> plan -> runtime -> records."""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hardware.profiles import LocalProfile, Profile, write_table
from hardware.topology import Hardware
from harness.config import method_kind, validate
from partitioners.base import cut_problem
from harness.controller.dynamic import Redecider
from harness.model.graph import ModelGraph, build_graph, crossing_tensors
from harness.controller.measure import latency_metrics, link_metrics, throughput_ips, timeline_figure
from harness.model.models import ModelSpec, make_input
from harness.network.link import LinkSpec
from harness.controller.records import RunRecord
from harness.controller.stale_runs import end_dead_runs
from harness.controller.runtime import (RunFailed, RunResult, WorkerSpec, latencies_ms, measured_seqs, overrun_cost_ms,
                             run_workers)
from harness.model.submodels import full_assignment
from harness.controller.traces import load_trace
from partitioners.base import LinkState, Partitioner, Plan, device_side_of

log = logging.getLogger("splitbench")

DECISION_REPEATS = 5


class InvalidRun(RuntimeError):
    """The emulation was not faithful (e.g. real compute overran the emulated budget)."""


def build_hardware(cfg: DictConfig) -> Hardware:
    if cfg.topology == "pair":
        return Hardware.pair(cfg.name, instantiate(cfg.device), instantiate(cfg.server))
    return Hardware.star(cfg.name, instantiate(cfg.server), int(cfg.num_servers))


def resolve_objective(cfg: DictConfig) -> None:
    """``method.objective: auto`` means latency, except in the stream scenario, where throughput matters."""
    if cfg.method.get("objective") == "auto":
        cfg.method.objective = "throughput" if cfg.scenario.name == "stream" else "latency"


def timed(fn: Callable[..., Any], *args: Any, repeats: int = 1) -> tuple[Any, float]:
    """Call ``fn`` ``repeats`` times; the last result and the median time in ms."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter_ns()
        result = fn(*args)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return result, statistics.median(times)


def is_local(profile: Profile) -> bool:
    return isinstance(profile, LocalProfile)


def calibrate_tdf(parts: dict[str, list[str]], profile_ms: dict[str, dict[str, float]],
                  local_ms: dict[str, float], margin: float, concurrent: int) -> float:
    """The smallest TDF at which every part's real compute fits its emulated budget, with headroom.

    ``concurrent`` workers computing at once on this machine's cores slow each other down; that is headroom too.
    """
    ratios = []
    for endpoint, nodes in parts.items():
        emulated = sum(profile_ms[endpoint][n] for n in nodes)
        real = sum(local_ms[n] for n in nodes)
        if emulated > 0:
            ratios.append(real / emulated)
    contention = max(1.0, concurrent / (torch.get_num_threads() or 1))
    return max(1.0, margin * contention * max(ratios, default=1.0))


def stage_plans(graph: ModelGraph, plan: Plan, roles: tuple[str, str],
                node_ms: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """What each side needs of a cut plan: the assignment, the tensors crossing, its emulated compute budget."""
    device_side = device_side_of(plan)
    assignment = full_assignment(graph, {n: 0 if n in device_side else 1 for n in graph.order
                                         if graph[n].op != "output"})
    crossing = [name for name, src, dst in crossing_tensors(graph, assignment) if (src, dst) == (0, 1)]
    return [{"assignment": assignment, "send": crossing, "recv": crossing,
             "budget_ms": sum(node_ms[endpoint][n] for n, p in assignment.items()
                              if p == index and graph[n].op != "output")}
            for index, endpoint in enumerate(roles)]


def cut_workers(cfg: DictConfig, graph: ModelGraph, plan: Plan, hardware: Hardware,
                node_ms: dict[str, dict[str, float]], tdf: float, pad: bool,
                keep_model: bool = False) -> tuple[list[WorkerSpec], str]:
    """One worker per side of the cut (the server only if it computes, unless plans can change)."""
    roles = hardware.cut_roles
    plans = stage_plans(graph, plan, roles, node_ms)
    server_needed = keep_model or max(plans[0]["assignment"].values()) == 1
    port = int(cfg.runtime.base_port) + 1  # the server listens; distinct ports let real workers share a host
    workers = []
    for index, endpoint in enumerate(roles[: 2 if server_needed else 1]):
        setup = {"model": ModelSpec.from_config(cfg.model).to_dict(), "plan": plans[index], "part": index,
                 "endpoint": endpoint, "tdf": tdf, "pad": pad, "keep_model": keep_model,
                 "max_payload": int(cfg.runtime.max_payload_mb) << 20, "threads": int(cfg.runtime.threads_per_worker),
                 "input": graph.input_name, "result": graph.result_name}
        if server_needed:
            peer = roles[1 - index]
            setup["listen" if index else "connect"] = {"peer": peer, "port": port}
            if index == 0:
                setup["pacer"] = {"peer": peer}
        workers.append(WorkerSpec(endpoint, setup))
    return workers, roles[0]


def max_abs_error(graph: ModelGraph, result: RunResult) -> float:
    """The split outputs against the whole model run here on the same inputs."""
    worst = 0.0
    with torch.no_grad():
        for seq, out in sorted(result.outputs.items()):
            ref = graph.module(make_input(graph.spec, seq))
            worst = max(worst, float((out - ref).abs().max()))
    return worst


def overrun_metrics(result: RunResult) -> dict[str, float]:
    """How far real compute overran its emulated budgets in the measured inferences, per span and per inference."""
    spans = [s for s in result.spans if s["kind"] == "compute" and s["seq"] >= result.warmup]
    lat = dict(zip(measured_seqs(result), latencies_ms(result)))
    costs = [100 * overrun_cost_ms(result, seq) / latency for seq, latency in lat.items() if latency > 0]
    return {"max_overrun_pct": 100 * max((s.get("overrun", 0.0) for s in spans), default=0.0),
            "overrun_spans": float(sum(s.get("overrun", 0.0) > 0 for s in spans)), "compute_spans": float(len(spans)),
            "overrun_cost_pct": max(costs, default=0.0)}


def verdict(result: RunResult, expected: int, tolerance_pct: float) -> str | None:
    """Why a run is invalid, or None (MLPerf's VALID/INVALID: the measurer decides, not the measured).

    Real compute that overruns its dilated budget delays everything after it: when the overruns of a measured
    inference add up to more than ``tolerance_pct`` of its latency, the emulation no longer holds. A tiny span that
    overruns by 50 % but costs microseconds does not invalidate a run; warm-up inferences do not count.
    """
    if len(result.outputs) != expected:
        return f"expected {expected} outputs, received {len(result.outputs)}"
    worst_pct, worst_seq = 0.0, None
    for seq, latency in zip(measured_seqs(result), latencies_ms(result)):
        pct = 100 * overrun_cost_ms(result, seq) / latency if latency > 0 else 0.0
        if pct > worst_pct:
            worst_pct, worst_seq = pct, seq
    if worst_pct > tolerance_pct:
        late = [s for s in result.spans if s["kind"] == "compute" and s["seq"] == worst_seq and s.get("overrun", 0) > 0]
        by_endpoint = {e: sum(s["endpoint"] == e for s in late) for e in sorted({s["endpoint"] for s in late})}
        return (f"real compute overran its emulated budgets (TDF {result.tdf:.2f}) by {worst_pct:.1f}% of inference "
                f"{worst_seq}'s latency (> {tolerance_pct:g}%), in compute spans {by_endpoint}; raise "
                "runtime.tdf_margin or runtime.tdf, or run on a quieter machine")
    return None


def run_experiment(cfg: DictConfig, rec: RunRecord) -> dict[str, float]:
    """Decide and run one experiment, logging everything to ``rec``; returns the metrics."""
    spec = ModelSpec.from_config(cfg.model)
    graph = build_graph(spec)
    hardware = build_hardware(cfg.hardware)
    method: Partitioner = instantiate(cfg.method)
    node_ms = hardware.node_ms(graph)
    link = LinkState(float(cfg.link.bandwidth_mbps), float(cfg.link.delay_ms))
    if method.kind != "cut":
        from harness.controller.spatial import run_spatial_experiment  # spatial methods have their own runtime
        return run_spatial_experiment(cfg, rec, graph, hardware, method, node_ms, link)
    device, server = hardware.cut_roles
    if hardware.topology == "star":
        rec.set_tags({"endpoints": f"{device},{server}",
                      "endpoints_note": f"device-server method on a star: host {device} and one server {server}"})
    problem = cut_problem(graph, node_ms[device], node_ms[server])
    prepared, offline_ms = timed(method.prepare, problem)
    plan, decision_ms = timed(method.decide, prepared, link, repeats=DECISION_REPEATS)
    plan_json = plan.to_json()
    rec.artifact_json(plan_json, "plan.json")
    metrics: dict[str, float] = {"decision_time_ms": decision_ms, "offline_time_ms": offline_ms,
                                 "predicted_latency_ms": plan.predicted_latency_ms, "nodes_before": len(problem.order)}
    for key in ("nodes_before", "nodes_after"):
        if key in plan_json:
            metrics[key] = float(plan_json[key])
    pad = not all(is_local(hardware.endpoints[e]) for e in (device, server)) and not cfg.runtime.remote
    tdf = _tdf(cfg, graph, plan, hardware, node_ms, pad, concurrent=2 if cfg.scenario.in_flight > 1 else 1)
    dynamic = cfg.scenario.name == "dynamic"
    workers, first = cut_workers(cfg, graph, plan, hardware, node_ms, tdf, pad, keep_model=dynamic)
    redecider = None
    if dynamic:
        first_plans = stage_plans(graph, plan, hardware.cut_roles, node_ms)
        redecider = Redecider(
            method=method, prepared=prepared, trace=load_trace(cfg.link.trace), estimator=cfg.scenario.estimator,
            initial_mbps=float(cfg.link.bandwidth_mbps), interval_ms=float(cfg.scenario.interval_ms), delay_ms=float(cfg.link.delay_ms),
            make_stage_plans=lambda p: stage_plans(graph, p, hardware.cut_roles, node_ms),
            current=frozenset(device_side_of(plan)),
            sends_data=bool(first_plans[0]["send"]) and max(first_plans[0]["assignment"].values()) == 1)
    try:
        result = run_workers([device, server], [(device, server, LinkSpec.from_config(cfg.link))], workers, first,
                             OmegaConf.to_container(cfg.scenario), tdf, float(cfg.runtime.timeout_s),
                             int(cfg.runtime.max_payload_mb) << 20, backend=cfg.runtime.backend,
                             compensate_headers=bool(cfg.link.compensate_headers),
                             make_hook=redecider.hook if redecider else None, **remote_args(cfg),
                             retime_tolerance_pct=float(cfg.runtime.overrun_tolerance_pct) if pad and cfg.runtime.tdf == "auto" else None)
    finally:
        if redecider is not None:
            redecider.close()
    if redecider is not None:
        _record_decisions(rec, redecider.decisions, metrics)
    return _finish(cfg, rec, graph, result, metrics)


def remote_args(cfg: DictConfig) -> dict[str, Any]:
    """Where workers already run on real boards: their control addresses and shared secret."""
    if not cfg.runtime.remote:
        return {}
    return {"remote": dict(cfg.runtime.remote), "token": cfg.runtime.token or os.environ.get("SPLITBENCH_TOKEN")}


def _record_decisions(rec: RunRecord, decisions: list[dict[str, Any]], metrics: dict[str, float]) -> None:
    """Every re-decision of a dynamic run: artifact, per-inference series and summary metrics."""
    rec.artifact_json(decisions, "decisions.json")
    rec.series("estimate_mbps", [d["estimate_mbps"] for d in decisions])
    rec.series("true_mbps", [d["true_mbps"] for d in decisions])
    rec.series("decision_ms", [d["decision_ms"] for d in decisions])
    errors = [abs(d["estimate_mbps"] - d["true_mbps"]) / d["true_mbps"] for d in decisions]
    metrics["decision_time_ms"] = statistics.median(d["decision_ms"] for d in decisions)
    metrics["plan_switches"] = sum(d["switched"] for d in decisions)
    metrics["estimate_rel_error"] = statistics.mean(errors)


def _tdf(cfg: DictConfig, graph: ModelGraph, plan: Plan, hardware: Hardware, node_ms: dict[str, dict[str, float]],
         pad: bool, concurrent: int) -> float:
    if not pad:
        return 1.0
    if cfg.runtime.tdf != "auto":
        return float(cfg.runtime.tdf)
    local = LocalProfile(threads=int(cfg.runtime.threads_per_worker)).node_ms(graph)
    device, server = hardware.cut_roles
    device_side = device_side_of(plan)
    parts = {device: [n for n in device_side], server: [n["name"] for n in plan.to_json()["nodes"]
                                                         if n["side"] == "server"]}
    return calibrate_tdf(parts, node_ms, local, float(cfg.runtime.tdf_margin), concurrent)


def _finish(cfg: DictConfig, rec: RunRecord, graph: ModelGraph, result: RunResult,
            metrics: dict[str, float]) -> dict[str, float]:
    """Turn the observed run into metrics, artifacts and the verdict."""
    metrics.update({"tdf": result.tdf, "max_abs_error": max_abs_error(graph, result)})
    if result.tdf_calibrated is not None:
        metrics["tdf_from_profile"] = result.tdf_calibrated
    metrics.update({f"peak_rss_mb_{e}": v for e, v in result.peak_rss_mb.items()})
    metrics.update({f"model_rss_mb_{e}": v for e, v in result.model_rss_mb.items()})
    crossed = any(s["kind"] == "send" and s["seq"] >= result.warmup for s in result.spans)
    rec.set_tags({"link_backend": result.backend, "measured_bandwidth_source": "transfers" if crossed else "probe"})
    expected = int(cfg.scenario.warmup) + int(cfg.scenario.inferences)
    metrics.update(overrun_metrics(result))
    reason = verdict(result, expected, float(cfg.runtime.overrun_tolerance_pct))
    rec.artifact_json(result.spans, "spans.json")
    rec.artifact_json(result.link_record, "link.json")
    fig = timeline_figure(result, title=f"{cfg.method.name} · {cfg.model.name} · {cfg.hardware.name} · "
                                          f"{cfg.link.bandwidth_mbps:g} Mbit/s")
    rec.figure(fig, "timeline.png")
    if reason is not None:
        rec.metrics(metrics)
        raise InvalidRun(reason)
    metrics.update(latency_metrics(result))
    metrics["throughput_ips"] = throughput_ips(result)
    metrics.update(link_metrics(result))
    lat = latencies_ms(result)
    if cfg.scenario.deadline_ms:
        metrics["deadline_hit_rate"] = float((lat <= float(cfg.scenario.deadline_ms)).mean())
    rec.metrics(metrics)
    rec.series("inference_latency_ms", list(lat))
    rec.set_tags({"valid": "true", "invalid_reason": ""})
    return metrics


def profile_mode(cfg: DictConfig) -> dict[str, float]:
    """``mode=profile``: measure every node of the model on this machine and write the table a TableProfile reads."""
    spec = ModelSpec.from_config(cfg.model)
    graph = build_graph(spec)
    profile = LocalProfile(threads=int(cfg.runtime.threads_per_worker), cache=False)
    times = profile.node_ms(graph)
    shape = "x".join(str(d) for d in spec.input_shape)
    path = cfg.profile_out or f"profiles/{spec.name}_{shape}.csv"
    write_table(path, graph, times, {"threads": profile.threads, "torch": torch.__version__})
    total = sum(times.values())
    print(f"wrote {path}: {len(times)} nodes, {total:.2f} ms in all")
    return {"profiled_total_ms": total}


def run_job(cfg: DictConfig, multirun: bool = False) -> dict[str, float]:
    """The body of ``run.py``: validate, run, record. In a sweep a failed job is recorded and the sweep goes on."""
    resolve_objective(cfg)
    validate(cfg)
    if cfg.mode == "profile":
        return profile_mode(cfg)
    name = f"{cfg.method.name}-{cfg.model.name}-{cfg.hardware.name}-{cfg.link.bandwidth_mbps:g}mbps"
    tags = {"method": cfg.method.name, "method_kind": method_kind(cfg), "model": cfg.model.name,
            "hardware": cfg.hardware.name, "scenario": cfg.scenario.name, "valid": "pending"}
    end_dead_runs()  # before this job's run opens: no record of a dead controller stays RUNNING
    try:
        with RunRecord(cfg, run_name=name, tags=tags) as rec:
            try:
                return run_experiment(cfg, rec)
            except (RunFailed, InvalidRun) as exc:
                rec.fail(str(exc))
                for endpoint, text in getattr(exc, "worker_logs", {}).items():
                    rec.text(text, f"logs/{endpoint}.log")
                log.error("run %s FAILED: %s", name, exc)
                if not multirun:
                    raise
                return {}
    except Exception as exc:
        if not multirun:
            raise
        log.error("run %s FAILED: %s: %s", name, type(exc).__name__, exc)
        return {}
