"""One experiment, end to end, for both kinds of method: the job's steps decide -> calibrate
(``harness.controller.job``, shared with ``mode=predict``) -> run the workers -> judge -> record once. Where cut and
spatial methods differ, a strategy says how (``harness.controller.cut``, ``harness.controller.spatial``)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import statistics
from typing import Any, Callable

import torch

from hardware.profiles import LocalProfile, whole_model_meta, write_table
from harness.analysis.labels import model_label
from harness.controller.experiment import Experiment
from harness.controller.measure import (compute_over_profile, interval_metrics, latency_metrics, link_metrics,
                                        output_deviation, throughput_ips, timeline_figure, trace_following_metrics,
                                        trace_windows)
from harness.controller.job import plan_job
from harness.loadgen.result import RunResult, latencies_ms, measured_seqs
from harness.loadgen.verdict import checks, overrun_metrics, verdict
from harness.controller.traces import Trace, load_trace
from harness.controller import phases
from harness.controller.predict import Prediction, predict
from harness.controller.records import RunRecord, environment
from harness.controller.session import ModelCache, WorkerPool, release_pool, worker_pool
from harness.controller.stale_runs import end_dead_runs
from harness.controller.runtime import Deployment, run_workers, share_weights, worker_zygote
from harness.loadgen.dilation import retry_tdf
from harness.loadgen.errors import RunFailed
from harness.worker.serve import compute_device, device_name
from harness.model.graph import ModelGraph, build_graph

log = logging.getLogger("splitbench")


class InvalidRun(RuntimeError):
    """The emulation was not faithful (e.g. real compute overran the emulated budget). ``overran_tdf``: the TDF
    whose budgets real compute overran (a higher one may hold), else None."""

    def __init__(self, reason: str, overran_tdf: float | None = None) -> None:
        super().__init__(reason)
        self.overran_tdf = overran_tdf


def run_experiment(exp: Experiment, rec: RunRecord, graph: ModelGraph | None = None,
                   pool: WorkerPool | None = None) -> dict[str, float]:
    """Decide and run one experiment, logging everything to ``rec``; returns the metrics. With ``pool`` (a sweep),
    the model's graph, local times and reference outputs, the topology and the workers are reused where they can
    be (``harness.controller.session``)."""
    models = pool.models if pool is not None else ModelCache(keep=False)
    end_setup = phases.begin("setup")
    graph = graph if graph is not None else models.graph(exp.model)
    local_ms = lambda: models.local_ms(graph, exp.runtime.threads_per_worker)  # noqa: E731
    decision = plan_job(exp, graph, local_ms)
    strategy, plan, dilation = decision.strategy, decision.plan, decision.dilation
    rec.set_tags({**strategy.tags(), "plan_digest": plan.digest()})
    rec.artifact_json(plan.to_json(), "plan.json")
    metrics = dict(decision.metrics)
    if dilation.auto is not None:  # the profile set the TDF the warm-up runs at; the workers' compute sets the rest
        metrics["tdf_from_profile"] = dilation.tdf
        rec.set_tags({"tdf_set_by": dilation.set_by or "", "tdf_source": "profile"})
    if not exp.runtime.remote:  # the local workers map the controller's weights instead of drawing them again
        share_weights(exp.model, graph.module)
    end_setup()
    deployment = Deployment(strategy.endpoints, strategy.links, strategy.workers(plan, dilation.tdf, dilation.pads),
                            strategy.first, strategy.in_flight(plan), exp.link.compensate_headers)
    hook = strategy.make_hook(exp.method, decision.prepared, plan)
    try:
        result = run_workers(deployment, exp.scenario, exp.runtime, dilation, make_hook=hook, pool=pool)
    finally:
        strategy.close()
    if (decisions := strategy.decisions()) is not None:
        record_decisions(rec, decisions, metrics)
        record_trace_following(rec, load_trace(exp.link.trace), result, decisions, metrics)
        record_trace_steps(rec, strategy.trace_steps() or [], metrics)
    out = finish(exp, rec, graph, result, metrics, models.reference)
    if exp.method.kind == "spatial" and out.get("throughput_ips"):
        out["task_time_ms"] = 1e3 / out["throughput_ips"]
        rec.metrics({"task_time_ms": out["task_time_ms"]})
    return out


def record_decisions(rec: RunRecord, decisions: list[dict[str, Any]], metrics: dict[str, float]) -> None:
    """Every re-decision of a dynamic run: artifact, per-inference series and summary metrics."""
    rec.artifact_json(decisions, "decisions.json")
    rec.series("estimate_mbps", [d["estimate_mbps"] for d in decisions])
    rec.series("true_mbps", [d["true_mbps"] for d in decisions])
    rec.series("decision_ms", [d["decision_ms"] for d in decisions])
    errors = [abs(d["estimate_mbps"] - d["true_mbps"]) / d["true_mbps"] for d in decisions]
    metrics["decision_time_ms"] = statistics.median(d["decision_ms"] for d in decisions)
    metrics["plan_switches"] = sum(d["switched"] for d in decisions)
    metrics["estimate_rel_error"] = statistics.mean(errors)
    probes = [d for d in decisions if d.get("probe_bytes")]
    metrics["probes"] = len(probes)
    metrics["probe_bytes"] = sum(d["probe_bytes"] for d in probes)
    metrics["probe_time_ms"] = sum(d["probe_ms"] for d in probes)
    ages = [d["estimate_age_ms"] for d in decisions if d.get("estimate_age_ms") is not None]
    if ages:
        metrics["estimate_age_ms"] = statistics.median(ages)


def record_trace_following(rec: RunRecord, trace: Trace, result: RunResult, decisions: list[dict[str, Any]],
                           metrics: dict[str, float]) -> None:
    """How closely the shaped link followed the trace: the measured inferences' transfers per emulated second against
    the trace's rate (``trace_following.json``, summary metrics ``trace_goodput_ratio_*``)."""
    windows = trace_windows(trace, result.spans, decisions, set(measured_seqs(result)))
    rec.artifact_json(windows, "trace_following.json")
    metrics.update(trace_following_metrics(windows))


def record_trace_steps(rec: RunRecord, landings: list[dict[str, float]], metrics: dict[str, float]) -> None:
    """When the trace's steps landed on the link (``trace_steps.json``; ``trace_step_late_ms_median`` and ``_max``,
    emulated ms after each step's instant): the trace-following windows compare goodput with the trace as
    scheduled, so a step the player landed late shows there as the link's error; these say how late it was."""
    if not landings:
        return
    rec.artifact_json(landings, "trace_steps.json")
    late = [step["late_ms"] for step in landings]
    metrics["trace_step_late_ms_median"] = statistics.median(late)
    metrics["trace_step_late_ms_max"] = max(late)


def record_clocks_and_devices(rec: RunRecord, result: RunResult, metrics: dict[str, float]) -> None:
    """Each remote worker's clock offset and its uncertainty; the processor each endpoint computed on."""
    for endpoint, clock in result.clocks.items():
        metrics[f"clock_offset_ms_{endpoint}"] = clock["offset_ms"]
        metrics[f"clock_uncertainty_ms_{endpoint}"] = clock["uncertainty_ms"]
        rec.set_tags({f"completion_stamp_{endpoint}": clock["completion_stamp"]})
    if result.devices:
        rec.set_tags({f"compute_device_{e}": name for e, name in result.devices.items()})
        rec.artifact_json({**environment(), "compute_devices": result.devices}, "environment.json")


def record_calibration(rec: RunRecord, result: RunResult, metrics: dict[str, float]) -> None:
    """What set the TDF: the workers' measured compute (which endpoint, what it needed), and every repeat."""
    if "tdf" in result.calibration:
        cal = result.calibration
        metrics["tdf_measured_need"] = cal["need"]
        rec.set_tags({"tdf_set_by": cal["set_by"], "tdf_source": "calibrated",
                      "calibration_reused": str(bool(cal.get("reused"))).lower()})
    if result.calibration:
        rec.artifact_json(result.calibration, "calibration.json")
    if result.repeats:
        rec.artifact_json(result.repeats, "repeats.json")
        rec.set_tags({"tdf_source": "raised", "repeats_reason": "; ".join(r["reason"] for r in result.repeats)[:4000]})


def finish(exp: Experiment, rec: RunRecord, graph: Any, result: RunResult, metrics: dict[str, float],
           reference: Callable[[Any, int], Any] | None = None) -> dict[str, float]:
    """Turn the observed run into metrics, artifacts and the verdict."""
    metrics.update({"tdf": result.tdf, **output_deviation(graph, result, reference)})
    record_calibration(rec, result, metrics)
    metrics.update({f"peak_rss_mb_{e}": v for e, v in result.peak_rss_mb.items()})
    metrics.update({f"model_rss_mb_{e}": v for e, v in result.model_rss_mb.items()})
    record_clocks_and_devices(rec, result, metrics)
    crossed = any(s["kind"] == "send" and s["seq"] >= result.warmup for s in result.spans)
    rec.set_tags({"link_backend": result.backend, "measured_bandwidth_source": "transfers" if crossed else "probe"})
    if "privilege" in result.link_record:  # links built here (not real boards): root, rootless or none
        rec.set_tags({"privilege": result.link_record["privilege"]})
    metrics.update(overrun_metrics(result))
    judged = checks(result, exp.scenario.total, exp.runtime.overrun_tolerance_pct)
    rec.set_tags({f"check_{c.name}": c.tag() for c in judged})
    reason = verdict(result, exp.scenario.total, exp.runtime.overrun_tolerance_pct)
    rec.artifact_json(result.spans, "spans.json")
    rec.artifact_json(result.link_record, "link.json")
    fig = timeline_figure(result, title=f"{exp.method.name} · {exp.model.name} · {exp.hardware.name} · "
                                        f"{exp.link.spec.bandwidth_mbps:g} Mbit/s")
    rec.figure(fig, "timeline.png")
    if reason is not None:
        rec.metrics(metrics)
        overran = metrics["overrun_cost_pct"] > exp.runtime.overrun_tolerance_pct
        raise InvalidRun(reason, overran_tdf=result.tdf if overran else None)
    metrics.update(latency_metrics(result))
    metrics["throughput_ips"] = throughput_ips(result)
    metrics.update(interval_metrics(result))
    metrics.update(link_metrics(result))
    metrics.update(compute_over_profile(result))
    lat = latencies_ms(result)
    if exp.scenario.deadline_ms:
        metrics["deadline_hit_rate"] = float((lat <= exp.scenario.deadline_ms).mean())
    rec.metrics(metrics)
    rec.series("inference_latency_ms", list(lat))
    rec.series("inference_tdf", [result.tdf_of(seq) for seq in measured_seqs(result)])
    rec.set_tags({"valid": "true", "invalid_reason": ""})
    return metrics


def profile_mode(exp: Experiment) -> dict[str, float]:
    """``mode=profile``: measure every node of the model on this machine and write the table a TableProfile reads."""
    graph = build_graph(exp.model)
    device = compute_device(exp.runtime.compute_device)
    profile = LocalProfile(threads=exp.runtime.threads_per_worker, cache=False, device=device.type)
    measured = profile.measure(graph)
    times = measured.corrected
    shape = "x".join(str(d) for d in exp.model.input_shape)
    path = exp.profile_out or f"profiles/{exp.model.name}_{shape}.csv"
    write_table(path, graph, times, {"threads": profile.threads, "torch": torch.__version__,
                                     "device": device_name(device), **whole_model_meta(measured)})
    total = sum(times.values())
    print(f"wrote {path}: {len(times)} nodes, {total:.2f} ms in all on {device_name(device)} (per-node medians "
          f"{measured.node_sum_ms:.2f} ms, corrected to the whole model's real time)")
    return {"profiled_total_ms": total, "whole_model_ms": measured.whole_ms, "node_sum_ms": measured.node_sum_ms}


def run_job(exp: Experiment, multirun: bool = False, launch: str | None = None) -> dict[str, float]:
    """Run and record one job. In a sweep a failed run (a worker crash, a timeout, an invalid emulation) is
    recorded FAILED and the sweep goes on; anything else is a harness bug and stops the sweep. An emulation that
    real compute overran is run again at a higher TDF, up to ``runtime.retries`` times: every attempt is a run of
    its own, linked to the next (``retried_as``) and the previous (``retry_of``); only the last can count.
    ``launch`` tags the runs of one ``run.py`` invocation, so that its summary can find them."""
    if exp.mode == "profile":
        return profile_mode(exp)
    reuse = multirun and exp.mode == "run" and exp.runtime.reuse and not exp.runtime.remote
    pool = worker_pool() if reuse else None
    if pool is None and exp.mode != "predict":
        release_pool()  # a job that does not reuse does not share the machine with the last job's workers
    if exp.mode == "run" and not exp.runtime.remote:
        worker_zygote()  # the workers' imports run beside this job's set-up (tracing, deciding, the record)
    with phases.job():
        return _record_job(exp, pool, multirun, launch)


def _record_job(exp: Experiment, pool: WorkerPool | None, multirun: bool, launch: str | None) -> dict[str, float]:
    with phases.phase("setup"):  # a trial run: a model.input_shape that does not fit stops here, before any record
        graph = pool.models.graph(exp.model) if pool is not None else build_graph(exp.model)
    tags = {"method": exp.method.name, "method_kind": exp.method.kind, "model": exp.model.name,
            "model_label": model_label(exp.model.name, exp.model.target, exp.model.input_shape),
            "hardware": exp.hardware.name, "scenario": exp.scenario.name, "valid": "pending",
            "codec": exp.codecs.label, "model_input": exp.model.input,
            **({"launch": launch} if launch else {})}
    end_dead_runs()  # before this job's run opens: no record of a dead controller stays RUNNING
    budget = exp.runtime.max_real_minutes
    if exp.mode == "predict" or budget is not None:
        with phases.phase("setup"):
            prediction = predict(exp, graph)
        if exp.mode == "predict":
            return record_prediction(exp, prediction, tags, None)
        if prediction.real_minutes > budget:
            return record_prediction(exp, prediction, tags, budget)
    # kept-alive workers hold the whole model, so their peak RSS is the whole model's, not only their part's
    tags = {**tags, "workers_kept_alive": str(pool is not None).lower()}
    retry_of: str | None = None
    for attempt in range(1, exp.runtime.retries + 2):
        attempt_tags = {"measured": "true", "attempt": str(attempt), **({"retry_of": retry_of} if retry_of else {})}
        with RunRecord(exp.name, exp.config, run_name=exp.run_name, tags={**tags, **attempt_tags}) as rec:
            if retry_of:
                rec.tag_run(retry_of, {"retried_as": rec.run_id})
            try:
                return run_experiment(exp, rec, graph, pool)
            except (RunFailed, InvalidRun) as exc:
                retry = isinstance(exc, InvalidRun) and exc.overran_tdf is not None and attempt <= exp.runtime.retries
                failed(exp, rec, exc, retried=retry)
                if retry:
                    exp, retry_of = at_higher_tdf(exp, exc.overran_tdf), rec.run_id
                    continue
                if not multirun:
                    raise
                return {}
    raise AssertionError("unreachable: the last attempt returns or raises")


def failed(exp: Experiment, rec: RunRecord, exc: Exception, retried: bool) -> None:
    """Record a failed attempt: FAILED with its reason and the workers' logs."""
    rec.fail(f"{exc}{' (retried at a higher TDF)' if retried else ''}")
    for endpoint, text in getattr(exc, "worker_logs", {}).items():
        rec.text(text, f"logs/{endpoint}.log")
    if retried:  # the designed path on a busy machine, not an error: the next attempt is the job's run
        log.warning("run %s overran its emulated budgets; retrying at a higher TDF: %s", exp.run_name, exc)
    else:
        log.error("run %s FAILED: %s", exp.run_name, exc)


def at_higher_tdf(exp: Experiment, overran_tdf: float) -> Experiment:
    """The same experiment at a fixed TDF ``retry_tdf_factor`` times the one real compute overran."""
    tdf = retry_tdf(overran_tdf, exp.runtime.retry_tdf_factor)
    config = copy.deepcopy(exp.config)
    config.setdefault("runtime", {})["tdf"] = tdf  # the record says the TDF the attempt ran at
    return dataclasses.replace(exp, runtime=dataclasses.replace(exp.runtime, tdf=tdf), config=config)


def record_prediction(exp: Experiment, prediction: Prediction, tags: dict[str, str],
                      budget_minutes: float | None) -> dict[str, float]:
    """A run tagged ``measured=false``: the decision and the cost model's figures, no worker started. With a budget,
    the job was skipped because its predicted real time exceeds it (``skipped=over_budget``)."""
    tags = {**tags, "measured": "false", "valid": "predicted", "tdf_set_by": prediction.tdf_set_by or ""}
    if budget_minutes is not None:
        reason = (f"skipped: predicted real time {prediction.real_minutes:.1f} min > runtime.max_real_minutes="
                  f"{budget_minutes:g} (TDF {prediction.metrics['predicted_tdf']:.1f} x "
                  f"{prediction.metrics['predicted_emulated_s']:.1f} s emulated + set-up)")
        tags.update({"skipped": "over_budget", "invalid_reason": reason})
        log.warning("run %s %s", exp.run_name, reason)
    with RunRecord(exp.name, exp.config, run_name=exp.run_name, tags=tags) as rec:
        rec.artifact_json(prediction.plan.to_json(), "plan.json")
        rec.set_tags({"plan_digest": prediction.plan.digest()})
        rec.metrics(prediction.metrics)
    return prediction.metrics
