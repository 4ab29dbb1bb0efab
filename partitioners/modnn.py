"""MoDNN (Mao et al., DATE 2017): biased one-dimensional partition (BODP), layer by layer.

Every conv/pool layer's output rows are cut into stripes sized by each server's speed on that layer (host
included), in endpoint order es0, es1, ...; the host scatters each secondary's input rows (with halo), every server
computes its stripe, the host gathers the rows, and so on for the next layer. The FC layers run on the host (the
paper partitions them with MSCC; we keep them whole [ours]). Tasks of a batch run one after another: MoDNN has no
pipelining across tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from partitioners.base import LinkState, Partitioner, Plan
from partitioners.spatial import Block, SpatialProblem, block_of, secondary_links, spatial_plan, split_rows


@dataclass
class Stripes:
    """BODP's stripes: one single-layer block per layer of the prefix."""

    problem: SpatialProblem
    blocks: list[Block]


class MoDNN(Partitioner):
    name = "modnn"
    kind = "spatial"

    def __init__(self, name: str = "modnn", tasks_per_batch: int = 1) -> None:
        if tasks_per_batch < 1:
            raise ValueError(f"modnn: tasks_per_batch must be >= 1, got {tasks_per_batch}")
        self.tasks_per_batch = int(tasks_per_batch)

    def prepare(self, problem: SpatialProblem) -> Stripes:
        """BODP does not look at the network: stripes depend only on the servers' speeds."""
        blocks = []
        for i, layer in enumerate(problem.layers):
            times = [float(layer.ms(e, layer.out_height)) for e in problem.endpoints]
            speeds = [1.0 / t for t in times] if all(t > 0 for t in times) else [1.0] * len(times)
            rows = split_rows(layer.out_height, speeds)
            blocks.append(block_of(problem, i, i, list(zip(problem.endpoints, rows))))
        return Stripes(problem, blocks)

    def decide(self, prepared: Stripes, link: LinkState | Mapping[str, LinkState]) -> Plan:
        links = secondary_links(prepared.problem, link)
        return spatial_plan(self.name, prepared.problem, prepared.blocks, links, self.tasks_per_batch,
                            pipelined=False, extra={"partition": "BODP: stripes by speed, every layer exchanged"})

