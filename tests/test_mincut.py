"""The min-cut methods: DADS (DSL, DSH), QDMP and CIC (both online modes).

Small random DAGs are checked against brute force over every valid device side; torchvision models at the 34
bandwidths of the brief against DADS, which the brute force vouches for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from partitioners.base import CutProblem, LinkState, cut_plan, device_side_of
from partitioners.cic import CIC, Line, _hull, lower_envelope, merge_dominated
from partitioners.dads import DADS
from partitioners.flow import CutGraph, DenseCut, NetworkxCut, OrtoolsCut, ScipyCut, Tensor, ms_per_byte
from partitioners.neurosurgeon import Neurosurgeon
from partitioners.qdmp import QDMP, cut_vertices
from hardware.codec_costs import WireCosts, wire_costs
from harness.model.codecs import Codecs

ROOT = Path(__file__).resolve().parent.parent
BANDWIDTHS = [float(b) for b in np.logspace(-1, 3, 30)] + [0.13, 1.1, 5.85, 18.88]
REL = 1e-9
HAS_ORTOOLS = importlib.util.find_spec("ortools") is not None
needs_ortools = pytest.mark.skipif(not HAS_ORTOOLS, reason="the flow extra (OR-tools) is not installed: "
                                                           "pip install -e '.[flow]' (CI installs it)")


# ---- small random DAGs and brute force --------------------------------------------------------------------------


def random_problem(seed: int, codec: bool = False) -> CutProblem:
    """A seeded DAG of 6-12 nodes: several successors per node, some zero-cost views, some zero-byte tensors; with
    ``codec``, each tensor also costs a codec time to encode on the device and decode on the server when it crosses
    (bandwidth-independent, as an image codec's or a quantiser's)."""
    rng = random.Random(seed)
    n = rng.randint(6, 12)
    names = [f"n{i}" for i in range(n)]
    preds: dict[str, set[str]] = {names[0]: set()}
    for i in range(1, n):
        preds[names[i]] = set(rng.sample(names[:i], min(i, rng.choice([1, 1, 2, 2, 3]))))
    for i in range(n - 1):  # no dead ends: every node feeds a later one
        if not any(names[i] in preds[m] for m in names[i + 1:]):
            preds[rng.choice(names[i + 1:])].add(names[i])
    succs = {m: tuple(k for k in names if m in preds[k]) for m in names}
    out_bytes, device_ms, server_ms = {}, {}, {}
    for m in names:
        if len(preds[m]) == 1 and rng.random() < 0.2:  # a view: free, as large as what it reads
            (p,) = preds[m]
            out_bytes[m], device_ms[m], server_ms[m] = out_bytes[p], 0.0, 0.0
            continue
        out_bytes[m] = 0 if rng.random() < 0.05 else rng.randint(1_000, 300_000)
        device_ms[m] = rng.uniform(0.0, 5.0)
        server_ms[m] = device_ms[m] * rng.uniform(0.05, 2.0)
    encode = {m: rng.uniform(0.0, 2.0) if codec and out_bytes[m] else 0.0 for m in names}
    decode = {m: rng.uniform(0.0, 1.0) if codec and out_bytes[m] else 0.0 for m in names}
    return CutProblem(order=names, preds={m: tuple(sorted(preds[m])) for m in names}, succs=succs,
                      out_bytes=out_bytes, device_ms=device_ms, server_ms=server_ms, input=names[0],
                      result=names[-1], encode_ms=encode, decode_ms=decode)


def closed_sides(problem: CutProblem) -> list[set[str]]:
    """Every device side: holds the input and every predecessor of its nodes."""
    free = [n for n in problem.order if n != problem.input]
    sides = []
    for bits in itertools.product((False, True), repeat=len(free)):
        side = {problem.input} | {n for n, b in zip(free, bits) if b}
        if all(p in side for n in side for p in problem.preds[n]):
            sides.append(side)
    return sides


def is_closed(problem: CutProblem, side: set[str]) -> bool:
    return problem.input in side and all(p in side for n in side for p in problem.preds[n])


SEEDS = range(30)
RANDOM_LINKS = [LinkState(b, d) for b in (0.1, 1.1, 5.85, 18.88, 100.0, 1000.0) for d in (0.0, 3.0)]


@pytest.fixture(scope="module")
def random_cases() -> list[tuple[CutProblem, list[set[str]]]]:
    return [(p, closed_sides(p)) for p in map(random_problem, SEEDS)]


@pytest.fixture(scope="module")
def random_codec_cases() -> list[tuple[CutProblem, list[set[str]]]]:
    return [(p, closed_sides(p)) for p in (random_problem(seed, codec=True) for seed in SEEDS)]


def brute_latency(problem: CutProblem, sides: list[set[str]], link: LinkState) -> float:
    return min(problem.latency_ms(s, link) for s in sides)


def assert_optimal(problem, sides, plan, link, who):
    side = device_side_of(plan)
    assert is_closed(problem, side), f"{who}: device side not closed under predecessors"
    assert plan.predicted_latency_ms == pytest.approx(problem.latency_ms(side, link), rel=REL)
    best = brute_latency(problem, sides, link)
    assert plan.predicted_latency_ms == pytest.approx(best, rel=REL), f"{who} at {link}"


@pytest.mark.parametrize("method", [DADS(), DADS(flow="scipy"),
                                    pytest.param(DADS(flow="ortools"), marks=needs_ortools),
                                    QDMP(), CIC(), CIC(flow="networkx"), CIC(online="envelope")],
                         ids=["dads-networkx", "dads-scipy", "dads-ortools", "qdmp", "cic-mincut",
                              "cic-mincut-networkx", "cic-envelope"])
def test_random_dags_optimal(random_cases, random_codec_cases, method):
    """Optimal against brute force, with tensors that cross as float32 and with tensors whose codec costs time."""
    for problem, sides in [*random_cases, *random_codec_cases]:
        prepared = method.prepare(problem)
        for link in RANDOM_LINKS:
            assert_optimal(problem, sides, method.decide(prepared, link), link, method.name)


def test_codec_time_counts_once_per_crossing_tensor_on_its_side(random_codec_cases):
    """The latency of a cut pays each crossing tensor's encoding on the device and decoding on the server."""
    problem, sides = random_codec_cases[0]
    link = LinkState(10.0)
    for side in sides:
        crossing = [n for n in side if any(s not in side for s in problem.succs[n])]
        device, _, server = problem.stage_ms(side, link)
        assert device == pytest.approx(sum(problem.device_ms[n] for n in side)
                                       + sum(problem.encode_ms[n] for n in crossing))
        assert server == pytest.approx(sum(problem.server_ms[n] for n in problem.order if n not in side)
                                       + sum(problem.decode_ms[n] for n in crossing))
        graph = CutGraph.from_problem(problem)
        index = {n: i for i, n in enumerate(problem.order)}
        a, b = graph.line([index[n] for n in side])
        assert a + ms_per_byte(link) * b == pytest.approx(problem.latency_ms(side, link))


def test_random_dags_have_shared_tensors_and_views(random_cases):
    """The generator must exercise the auxiliary nodes and the structural merges, or the tests above prove less."""
    multi = sum(any(len(p.succs[n]) > 1 for n in p.order) for p, _ in random_cases)
    merged = sum(len(merge_dominated(CutGraph.from_problem(p))) < len(p.order) for p, _ in random_cases)
    assert multi >= 25 and merged >= 10


def test_envelope_matches_brute_force_envelope(random_cases):
    """The parametric min-cut finds the lower envelope of all cuts' lines, at and between its breakpoints."""
    for problem, sides in random_cases:
        graph = CutGraph.from_problem(problem)
        index = {n: i for i, n in enumerate(problem.order)}
        every = _hull([Line(*graph.line([index[n] for n in s]), ()) for s in sides])
        found = lower_envelope(merge_dominated(graph))
        xs = [x for x, _ in every] + [x for x, _ in found]
        xs += [x * f for x in xs if x > 0 for f in (0.5, 1.5)] + [1e-9, 1e-3, 1.0, 1e3]
        for x in xs:
            expected = min(line.at(x) for _, line in every)
            assert min(line.at(x) for _, line in found) == pytest.approx(expected, rel=REL, abs=1e-12)
        for i in range(1, len(found)):  # neighbouring pieces meet at the breakpoint
            x = found[i][0]
            assert found[i - 1][1].at(x) == pytest.approx(found[i][1].at(x), rel=REL)


def test_dsh_not_worse_than_dsl_and_not_better_than_optimum(random_cases):
    dsl, dsh = DADS(), DADS(objective="throughput")
    for problem, sides in random_cases[::2]:
        p_dsl, p_dsh = dsl.prepare(problem), dsh.prepare(problem)
        for link in RANDOM_LINKS[1::4]:
            plan = dsh.decide(p_dsh, link)
            side = device_side_of(plan)
            stages = problem.stage_ms(side, link)
            assert is_closed(problem, side)
            assert plan.detail["stage_ms"] == pytest.approx(list(stages), rel=REL)
            assert max(stages) <= max(problem.stage_ms(device_side_of(dsl.decide(p_dsl, link)), link)) * (1 + REL)
            assert max(stages) >= min(max(problem.stage_ms(s, link)) for s in sides) * (1 - REL)


def test_min_cut_value_is_the_latency_of_its_cut(random_cases):
    """The network prices a cut exactly as ``CutProblem.latency_ms`` does (without the delay, paid outside)."""
    for problem, _ in random_cases:
        graph = CutGraph.from_problem(problem)
        solver = NetworkxCut(graph)
        for link in RANDOM_LINKS[::2]:
            value, groups = solver.minimum(ms_per_byte(link))
            assert value == pytest.approx(problem.latency_ms(set(graph.names(groups)), link), rel=REL)


def test_scipy_never_beats_networkx_and_stays_within_resolution(random_cases):
    for problem, _ in random_cases:
        graph = CutGraph.from_problem(problem)
        exact, ticks = NetworkxCut(graph), ScipyCut(graph)
        slack = ScipyCut.resolution_ms * 2 * (len(graph) + len(graph.tensors))  # half a tick per arc, both cuts
        for link in RANDOM_LINKS[::2]:
            x = ms_per_byte(link)
            best, _ = exact.minimum(x)
            value, groups = ticks.minimum(x)
            found = problem.latency_ms(set(graph.names(groups)), link)
            assert best * (1 - REL) <= found <= best + slack
            assert value == pytest.approx(found, abs=slack)


@needs_ortools
def test_ortools_finds_the_exact_minimum_within_its_ticks(random_cases):
    """OR-tools' cut costs what networkx's exact minimum costs; its flow value, counted in ticks of 2**-52 of all
    capacities together, agrees with that cost to 1e-9."""
    for problem, _ in random_cases:
        graph = CutGraph.from_problem(problem)
        exact, ticks = NetworkxCut(graph), OrtoolsCut(graph)
        for link in RANDOM_LINKS[::2]:
            x = ms_per_byte(link)
            best, _ = exact.minimum(x)
            value, groups = ticks.minimum(x)
            found = problem.latency_ms(set(graph.names(groups)), link)
            assert found == pytest.approx(best, rel=REL)
            assert value == pytest.approx(found, rel=REL)


def test_ortools_missing_is_one_line_naming_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ortools(name, *args, **kwargs):
        if name.startswith("ortools"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ortools)
    with pytest.raises(ValueError, match=r"flow 'ortools' needs OR-tools: pip install -e '\.\[flow\]'"):
        DADS(flow="ortools").prepare(diamond(device_ms=1.0, server_ms=0.5))


def random_cut_graph(seed: int) -> CutGraph:
    """A seeded cut graph of 2-8 groups, as a splitting model but denser: tensors read by up to three groups, some
    producers with two tensors, zero bytes and zero times, and sometimes the last group pinned to the server."""
    rng = random.Random(seed)
    k = rng.randint(2, 8)
    tensors = []
    for producer in range(k - 1):
        later = range(producer + 1, k)
        reads = {tuple(sorted(rng.sample(later, rng.randint(1, min(3, len(later)))))) for _ in range(rng.randint(1, 2))}
        tensors += [Tensor(producer, consumers, 0 if rng.random() < 0.1 else rng.randint(1, 10**6))
                    for consumers in sorted(reads)]
    device = [0.0 if rng.random() < 0.1 else rng.uniform(0.0, 80.0) for _ in range(k)]
    server = [0.0 if rng.random() < 0.1 else d * rng.uniform(0.02, 2.0) for d in device]
    on_server = frozenset({k - 1}) if rng.random() < 0.3 else frozenset()
    return CutGraph([(f"g{g}",) for g in range(k)], device, server, tensors, frozenset({0}), on_server)


def test_dense_cut_equals_networkx_on_random_small_graphs():
    """The splitting model's solver finds networkx's minimum cut: the same value, exactly, and the same side."""
    xs = [0.0, 2.0**-80, 3e-30, 1e-9] + [ms_per_byte(LinkState(b)) for b in BANDWIDTHS[::3]] + [0.7, 1e3]
    shared = pinned = 0
    for seed in range(300):
        graph = random_cut_graph(seed)
        dense, exact = DenseCut(graph), NetworkxCut(graph)
        shared += any(len(t.consumers) > 1 for t in graph.tensors)
        pinned += bool(graph.on_server)
        for x in xs + ([] if graph.on_server else [math.inf]):
            value, groups = dense.minimum(x)
            assert (value, groups) == exact.minimum(x), (seed, x)
            assert graph.is_closed(groups)
            if math.isfinite(x):
                a, b = graph.line(groups)
                assert value == pytest.approx(a + x * b, rel=REL, abs=1e-12), (seed, x)
    assert shared >= 150 and pinned >= 50  # the auxiliary nodes and the infinite sink arcs are exercised


def test_dense_cut_refuses_a_network_without_a_finite_cut():
    """With no bandwidth, a group pinned to the server makes every side send something."""
    graph = CutGraph([("x",), ("y",)], [1.0, 1.0], [0.5, 0.5], [Tensor(0, (1,), 10)], frozenset({0}), frozenset({1}))
    assert DenseCut(graph).minimum(1.0) == (1.0 + 10.0 + 0.5, [0])
    with pytest.raises(ValueError, match="no cut of finite capacity"):
        DenseCut(graph).minimum(math.inf)


# ---- hand-made graphs ---------------------------------------------------------------------------------------------


def diamond(device_ms: float = 1.0, server_ms: float = 0.1) -> CutProblem:
    """x -> a -> {b, c} -> d -> y: a's tensor feeds two nodes and must be paid once."""
    order = ["x", "a", "b", "c", "d", "y"]
    preds = {"x": (), "a": ("x",), "b": ("a",), "c": ("a",), "d": ("b", "c"), "y": ("d",)}
    succs = {n: tuple(m for m in order if n in preds[m]) for n in order}
    return CutProblem(order, preds, succs, out_bytes={"x": 1000, "a": 10, "b": 500, "c": 500, "d": 400, "y": 4},
                      device_ms={n: device_ms for n in order}, server_ms={n: server_ms for n in order},
                      input="x", result="y")


def test_shared_tensor_is_paid_once():
    problem = diamond()
    plan = DADS().decide(DADS().prepare(problem), LinkState(1.0))
    # Best: x, a on the device, a's 10 bytes sent once though b and c both read it.
    assert device_side_of(plan) == {"x", "a"}
    assert plan.predicted_latency_ms == pytest.approx(2 * 1.0 + 4 * 0.1 + 10 * 8 / 1e3)


def test_cut_vertices_of_diamond():
    assert cut_vertices(diamond()) == ["x", "a", "d", "y"]


def test_no_data_back_to_the_device():
    """Without the reverse arcs, a server-side b could feed a device-side d for free."""
    problem = diamond(device_ms=0.1, server_ms=1.0)  # the device is faster: everything stays there
    problem.device_ms["b"], problem.server_ms["b"] = 5.0, 0.0
    for method in (DADS(), QDMP(), CIC()):
        plan = method.decide(method.prepare(problem), LinkState(10.0))
        assert is_closed(problem, device_side_of(plan)), method.name


def chain(costs: list[tuple[float, float, int]]) -> CutProblem:
    """x -> n1 -> n2 ...: (device ms, server ms, out bytes) per node, the input first."""
    order = ["x"] + [f"n{i}" for i in range(1, len(costs))]
    return CutProblem(order, {n: tuple(order[i - 1:i]) for i, n in enumerate(order)},
                      {n: tuple(order[i + 1:i + 2]) for i, n in enumerate(order)},
                      out_bytes={n: c[2] for n, c in zip(order, costs)},
                      device_ms={n: c[0] for n, c in zip(order, costs)},
                      server_ms={n: c[1] for n, c in zip(order, costs)}, input="x", result=order[-1])


@pytest.mark.parametrize("costs, best, merged", [
    # A free view n2 of n1 (same bytes): cutting before or after it ties, so it joins a neighbour.
    ([(0, 0, 10**6), (1, 1, 100), (0, 0, 100), (100, 1, 4)], [{"x", "n1"}, {"x", "n1", "n2"}], 2),
    # n2 is no faster on the server but sends far more than n1: the cut between them must survive.
    ([(0, 0, 10**6), (1, 0.5, 100), (1, 1, 10**6), (100, 1, 4)], [{"x", "n1"}], 3),
    # n1 shrinks its input: a device side ending at n1 must survive although the server runs n1 faster.
    ([(0, 0, 10**6), (1, 0.5, 100), (100, 1, 4)], [{"x", "n1"}], 3),
    # n1 and n2 keep the size and run faster on the server: never end the device side there.
    ([(0, 0, 10**4), (1, 0.5, 10**4), (1, 0.5, 10**4), (100, 1, 4)], [{"x"}], 2),
])
def test_structural_merges_keep_the_cuts_that_matter(costs, best, merged):
    problem = chain(costs)
    assert len(merge_dominated(CutGraph.from_problem(problem))) == merged
    link = LinkState(10.0)
    for online in ("mincut", "envelope"):
        method = CIC(online=online)
        assert device_side_of(method.decide(method.prepare(problem), link)) in best


def test_contract_refuses_a_non_convex_merge():
    graph = CutGraph.from_problem(diamond())
    with pytest.raises(ValueError, match="cycle"):
        graph.contract([0, 1, 2, 3, 1, 4])  # a with d, but b between them stays apart


def test_cic_plan_table_equals_cut_plan():
    problem = random_problem(3)
    for online in ("mincut", "envelope"):
        method = CIC(online=online)
        prepared = method.prepare(problem)
        for link in RANDOM_LINKS:
            plan = method.decide(prepared, link)
            reference = cut_plan("cic", problem, device_side_of(plan), link, prepared.extra)
            assert plan.detail == reference.detail
            assert plan.predicted_latency_ms == pytest.approx(reference.predicted_latency_ms, rel=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda: DADS(objective="energy"), r"objective 'energy' is not one of \['latency', 'throughput'\]"),
    (lambda: DADS(flow="igraph"), r"flow 'igraph' is not one of \['networkx', 'ortools', 'scipy'\]"),
    (lambda: QDMP(objective="throughput"), r"qdmp: objective 'throughput' is not one of \['latency'\]"),
    (lambda: CIC(objective="throughput"), r"cic: objective 'throughput' is not one of \['latency'\]"),
    (lambda: CIC(online="table"), r"cic: online 'table' is not one of \['envelope', 'mincut'\]"),
    (lambda: CIC(flow="scipy"), r"cic: flow 'scipy' is not one of \['dense', 'networkx'\]"),
])
def test_bad_options_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("method, cls", [("dads", DADS), ("qdmp", QDMP), ("cic", CIC)])
def test_method_configs_instantiate(method, cls):
    cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml")
    if cfg.objective == "auto":  # the harness resolves it from the scenario
        cfg.objective = "latency"
    partitioner = instantiate(cfg)
    assert isinstance(partitioner, cls) and partitioner.name == cfg.name == cls.name and cls.kind == "cut"


# ---- torchvision models on the Xavier -> 1080 Ti roofline costs ------------------------------------------------

MODELS = {
    "resnet50": ("torchvision.models.resnet50", 224, {}),
    "googlenet": ("torchvision.models.googlenet", 224, {"aux_logits": False, "init_weights": False}),
    "densenet121": ("torchvision.models.densenet121", 224, {}),
    "inception_v3": ("torchvision.models.inception_v3", 299, {"aux_logits": False, "init_weights": False}),
}


CODEC_MODELS = {"resnet50": "fp16", "googlenet": "int8", "densenet121": "fp16", "inception_v3": "int8"}


def proportional_wire_costs(graph, codecs: Codecs) -> WireCosts:
    """The codecs' bytes, with encode and decode times in proportion to each tensor's elements (about this
    machine's int8 figures: 1.1 and 0.2 ns per element, the device's 4x slower), the input's JPEG as measured: the
    exactness of a cut does not depend on the costs, and timing every tensor of four models costs minutes."""
    measured = wire_costs(graph, Codecs(input=codecs.input), 4.0, 1.0)  # the input's codec only
    out_bytes, encode, decode = dict(measured.out_bytes), dict(measured.encode_ms), dict(measured.decode_ms)
    for name in measured.out_bytes:
        codec, shape = codecs.for_node(graph, name), graph[name].out_shape
        if name != graph.input_name and codec.compresses and shape:
            out_bytes[name] = codec.wire_bytes(shape)
            encode[name], decode[name] = 4 * 1.1e-6 * math.prod(shape), 0.2e-6 * math.prod(shape)
    return WireCosts(out_bytes, encode, decode)


@pytest.fixture(scope="module")
def model_problems() -> dict[str, CutProblem]:
    from partitioners.base import cut_problem
    from harness.model.graph import build_graph
    from harness.model.models import ModelSpec

    device = instantiate(OmegaConf.load(ROOT / "conf" / "profile" / "jetson_agx_xavier.yaml"))
    server = instantiate(OmegaConf.load(ROOT / "conf" / "profile" / "gtx1080ti.yaml"))
    problems = {}
    for name, (target, size, args) in MODELS.items():
        graph = build_graph(ModelSpec(name, target, (1, 3, size, size), 0, {"weights": None, **args},
                                      input="natural"))
        problems[name] = cut_problem(graph, device.node_ms(graph), server.node_ms(graph))
        if name in CODEC_MODELS:  # the codecs' real bytes, and times in proportion to each tensor's size
            wire = proportional_wire_costs(graph, Codecs.of("jpeg", CODEC_MODELS[name]))
            problems[f"{name}_jpeg_{CODEC_MODELS[name]}"] = cut_problem(graph, device.node_ms(graph),
                                                                         server.node_ms(graph), wire)
    # The roofline server is faster at every node; a copy with a server sometimes slower has a richer envelope.
    rng = random.Random(0)
    resnet = problems["resnet50"]
    problems["resnet50_mixed"] = dataclasses.replace(
        resnet, server_ms={n: v * rng.uniform(0.02, 1.5) for n, v in resnet.device_ms.items()})
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MODELS, "resnet50_mixed", *(f"{m}_jpeg_{c}" for m, c in CODEC_MODELS.items())])
def test_models_all_methods_equal_dads(model_problems, name):
    problem = model_problems[name]
    dads = DADS()
    reference = dads.prepare(problem)
    others = [QDMP(), CIC(), CIC(flow="networkx"), CIC(online="envelope"), DADS(flow="scipy"),
              *([DADS(flow="ortools")] if HAS_ORTOOLS else [])]
    prepared = [m.prepare(problem) for m in others]
    cic, cic_networkx = prepared[1:3]
    assert cic.extra["nodes_before"] == len(problem.order) > cic.extra["nodes_after"] >= 2
    assert isinstance(cic.solver, DenseCut) and isinstance(cic_networkx.solver, NetworkxCut)
    for bandwidth in BANDWIDTHS:
        link = LinkState(bandwidth)
        best = dads.decide(reference, link)
        assert is_closed(problem, device_side_of(best))
        if bandwidth in (0.13, 1.1, 5.85, 18.88):  # the min-cut's value is the latency of its cut
            value, groups = reference.solver.minimum(ms_per_byte(link))
            assert value == pytest.approx(best.predicted_latency_ms, rel=REL)
        plans = [method.decide(prep, link) for method, prep in zip(others, prepared)]
        for method, plan in zip(others, plans):
            assert is_closed(problem, device_side_of(plan)), method.name
            assert plan.predicted_latency_ms == pytest.approx(best.predicted_latency_ms, rel=REL), \
                (name, method.name, getattr(method, "online", ""), getattr(method, "flow", ""), bandwidth)
        assert plans[1] == plans[2]  # the two min-cut solvers of CIC find the same cut


@pytest.mark.slow
def test_models_dsh_not_worse_than_dsl(model_problems):
    dsl, dsh = DADS(flow="scipy"), DADS(objective="throughput", flow="scipy")
    for problem in model_problems.values():
        p_dsl, p_dsh = dsl.prepare(problem), dsh.prepare(problem)
        for bandwidth in (0.13, 1.1, 5.85, 18.88, 100.0):
            link = LinkState(bandwidth)
            plan = dsh.decide(p_dsh, link)
            stages = problem.stage_ms(device_side_of(plan), link)
            assert plan.detail["stage_ms"] == pytest.approx(list(stages), rel=REL)
            assert max(stages) <= max(problem.stage_ms(device_side_of(dsl.decide(p_dsl, link)), link)) * (1 + REL)


def test_delay_prefers_sending_nothing_when_it_pays():
    problem = diamond(device_ms=1.0, server_ms=0.5)
    link = LinkState(1000.0, delay_ms=50.0)  # a fast link, but any transfer costs 50 ms
    for method in (DADS(), DADS(flow="scipy"), QDMP(), CIC(), CIC(online="envelope")):
        plan = method.decide(method.prepare(problem), link)
        assert device_side_of(plan) == set(problem.order), method.name
        assert plan.predicted_latency_ms == pytest.approx(6.0)
        assert math.isfinite(plan.predicted_latency_ms)


def test_a_codec_that_shrinks_the_input_moves_every_method_to_offload():
    """A constructed case: the input is 602 KB as float32 and 16 KB as a JPEG; the device is slow. At 5.85 Mbit/s
    raw offload takes 823 ms, so every method keeps the model on the device; with the JPEG's bytes and codec times
    offload takes ~28 ms and every method sends the input."""
    order = ["x", "conv", "fc"]
    raw = CutProblem(order=order, preds={"x": (), "conv": ("x",), "fc": ("conv",)},
                     succs={"x": ("conv",), "conv": ("fc",), "fc": ()},
                     out_bytes={"x": 602_112, "conv": 3_211_264, "fc": 4_000},
                     device_ms={"x": 0.0, "conv": 90.0, "fc": 10.0}, server_ms={"x": 0.0, "conv": 4.5, "fc": 0.5},
                     input="x", result="fc")
    jpeg = dataclasses.replace(raw, out_bytes={**raw.out_bytes, "x": 16_490},
                               encode_ms={"x": 1.9, "conv": 0.0, "fc": 0.0}, decode_ms={"x": 0.5, "conv": 0.0, "fc": 0.0})
    link = LinkState(5.85)
    for method in (DADS(), DADS(flow="scipy"), QDMP(), CIC(), CIC(online="envelope"), Neurosurgeon()):
        assert device_side_of(method.decide(method.prepare(raw), link)) == set(order), method.name
        plan = method.decide(method.prepare(jpeg), link)
        assert device_side_of(plan) == {"x"}, method.name
        assert plan.predicted_latency_ms == pytest.approx(16_490 * 8 / 5850 + 1.9 + 0.5 + 5.0)


def test_a_fixed_cut_runs_the_named_nodes_and_their_ancestors_on_the_device():
    from partitioners.fixed_cut import FixedCut

    problem = random_problem(3)
    last = problem.order[len(problem.order) // 2]
    plan = FixedCut(after=last).decide(FixedCut(after=last).prepare(problem), LinkState(10.0))
    side = device_side_of(plan)
    ancestors, todo = set(), [last]
    while todo:
        node = todo.pop()
        ancestors.add(node)
        todo.extend(problem.preds[node])
    assert side == ancestors | {problem.input} and is_closed(problem, side)
    assert len(side) < len(problem.order)  # the rest runs on the server
    with pytest.raises(ValueError, match=r"method.after names \['nope'\], which are not nodes of the model"):
        FixedCut(after="nope").prepare(problem)
    with pytest.raises(ValueError, match="must name at least one node"):
        FixedCut(after=" , ")
