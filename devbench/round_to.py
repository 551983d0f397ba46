"""`python -m devbench.round_to`: batch-1 latency of the demo's structurally pruned students on the study's latency
backend (ONNX Runtime), for round_to 1, 2, 4 and 8: which channel multiple keeps pruned models fast.

Each row is `study.trial.run.architecture_costs` of the demo space's config with that width, prune ratio and round_to
(an untrained copy, pruned as a trial prunes, exported and timed as a trial times it; the latency cache keyed by
the model's shapes is shared with the studies).
"""

from __future__ import annotations

import sys


def main() -> int:
    from study.search.space import load_space
    from study.trial.run import architecture_costs

    space = load_space("demo")
    print("width  ratio  round_to  params  latency_ms_bs1")
    for width, ratio in ((1.0, 0.3), (1.0, 0.5), (0.75, 0.3), (0.5, 0.3)):
        for round_to in (1, 2, 4, 8):
            cfg = space.base_config().replace(width_mult=width, prune_method="l1_structured", prune_ratio=ratio,
                                              round_to=round_to, latency_repeats=200)
            c = architecture_costs(cfg, 10, (1, 8, 8), latency=True)
            print(f"{width:<6} {ratio:<6} {round_to:<9} {c['params']:>6,}  {c['latency_ms_bs1']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
