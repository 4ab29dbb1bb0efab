"""Running a spatial plan (HALP, MoDNN) for real: a star of edge servers in namespaces, one shaped link each."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hardware.profiles import LocalProfile
from hardware.topology import Hardware
from harness.model.graph import ModelGraph
from harness.model.models import ModelSpec
from harness.network.link import LinkSpec
from harness.controller.records import RunRecord
from harness.controller.runtime import WorkerSpec, run_workers
from partitioners.base import LinkState, Partitioner
from partitioners.spatial import SpatialProblem, kernel_overheads_ms, segment, spatial_problem


def _layer_index(problem: SpatialProblem) -> dict[str, int]:
    return {node: i for i, layer in enumerate(problem.layers) for node in layer.nodes}


def calibrate_spatial_tdf(plan: dict[str, Any], emulated: SpatialProblem, local: SpatialProblem, margin: float,
                          concurrent: int, cores: int) -> float:
    """The smallest TDF at which every segment's (and the suffix's) real compute fits its emulated budget."""
    index = _layer_index(local)
    ratios = []
    for block in plan["blocks"]:
        first, last = index[block["layers"][0]], index[block["layers"][-1]]
        for seg in block["segments"]:
            real = segment(local, first, last, local.host, tuple(seg["out_rows"])).compute_ms
            if seg["compute_ms"] > 0:
                ratios.append(real / seg["compute_ms"])
    if emulated.suffix_ms[emulated.host] > 0:
        ratios.append(local.suffix_ms[local.host] / emulated.suffix_ms[emulated.host])
    contention = max(1.0, concurrent / cores)
    return max(1.0, margin * contention * max(ratios, default=1.0))


def spatial_workers(cfg: DictConfig, plan: dict[str, Any], tdf: float, pad: bool) -> list[WorkerSpec]:
    """The host dials every secondary (a connection per direction); each secondary listens on its link."""
    host = plan["host"]
    secondaries = [e for e in plan["endpoints"] if e != host]
    for block in plan["blocks"]:
        for e in secondaries:
            if sum(s["endpoint"] == e for s in block["segments"]) > 1:
                raise ValueError(f"spatial plan gives {e} several segments in block {block['layers'][0]}: the "
                                 "runtime sends one band per secondary and block")
    port = int(cfg.runtime.base_port)
    common = {"kind": "spatial", "model": ModelSpec.from_config(cfg.model).to_dict(), "plan": plan, "tdf": tdf,
              "pad": pad, "max_payload": int(cfg.runtime.max_payload_mb) << 20,
              "threads": int(cfg.runtime.threads_per_worker)}
    workers = [WorkerSpec(host, {**common, "endpoint": host,
                                 "peers": {e: {"peer": e, "port": port + i} for i, e in enumerate(secondaries, 1)},
                                 "pacers": {e: {"peer": e} for e in secondaries}})]
    workers += [WorkerSpec(e, {**common, "endpoint": e, "listen": {"peer": host, "port": port + i},
                               "pacer": {"peer": host}}) for i, e in enumerate(secondaries, start=1)]
    return workers


def run_spatial_experiment(cfg: DictConfig, rec: RunRecord, graph: ModelGraph, hardware: Hardware,
                           method: Partitioner, node_ms: dict[str, dict[str, float]], link: LinkState) -> dict[str, float]:
    from harness.controller.pipeline import DECISION_REPEATS, _finish, is_local, remote_args, timed  # one record path

    overheads = kernel_overheads_ms(hardware.endpoints)
    problem = spatial_problem(graph, node_ms, overheads)
    prepared, offline_ms = timed(method.prepare, problem)
    plan, decision_ms = timed(method.decide, prepared, link, repeats=DECISION_REPEATS)
    plan_json = plan.to_json()
    rec.artifact_json(plan_json, "plan.json")
    metrics: dict[str, float] = {
        "decision_time_ms": decision_ms, "offline_time_ms": offline_ms,
        "predicted_latency_ms": plan.predicted_latency_ms, "host_alone_ms": float(plan_json["host_alone_ms"]),
        "predicted_speedup": float(plan_json["speedup_over_host"]), "blocks": float(len(plan_json["blocks"]))}
    pad = not all(is_local(p) for p in hardware.endpoints.values()) and not cfg.runtime.remote
    endpoints = list(hardware.endpoints)
    tasks = int(plan_json.get("tasks_per_batch", 1))
    in_flight = max(int(cfg.scenario.in_flight), tasks)
    tdf = 1.0
    if pad:
        if cfg.runtime.tdf != "auto":
            tdf = float(cfg.runtime.tdf)
        else:
            local_ms = LocalProfile(threads=int(cfg.runtime.threads_per_worker)).node_ms(graph)
            local = spatial_problem(graph, {e: local_ms for e in endpoints})
            tdf = calibrate_spatial_tdf(plan_json, problem, local, float(cfg.runtime.tdf_margin),
                                        concurrent=len(endpoints), cores=os.cpu_count() or 1)
    workers = spatial_workers(cfg, plan_json, tdf, pad)
    scenario = {**OmegaConf.to_container(cfg.scenario), "in_flight": in_flight}
    host = plan_json["host"]
    links = [(host, e, LinkSpec.from_config(cfg.link)) for e in endpoints if e != host]
    result = run_workers(endpoints, links, workers, host, scenario, tdf, float(cfg.runtime.timeout_s),
                         int(cfg.runtime.max_payload_mb) << 20, backend=cfg.runtime.backend,
                         compensate_headers=bool(cfg.link.compensate_headers), **remote_args(cfg),
                         retime_tolerance_pct=float(cfg.runtime.overrun_tolerance_pct) if pad and cfg.runtime.tdf == "auto" else None)
    out = _finish(cfg, rec, graph, result, metrics)
    if out.get("throughput_ips"):
        out["task_time_ms"] = 1e3 / out["throughput_ips"]
        rec.metrics({"task_time_ms": out["task_time_ms"]})
    return out
