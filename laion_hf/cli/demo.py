"""``laion-hf demo``: the whole pipeline on the embedded world."""

from __future__ import annotations

from laion_hf import demo
from laion_hf.cli import _args as A
from laion_hf.cli._options import add_clip_arguments


def register(sub) -> None:
    """``laion-hf demo``."""
    p = sub.add_parser(
        "demo", help="run the whole pipeline on the embedded image world (loopback only)", description=demo.__doc__
    )
    p.add_argument(
        "--out",
        default="demo_out",
        help="output folder (default demo_out; a previous demo output there is replaced, any other non-empty folder refused)",
    )
    p.add_argument("--rows", type=A.positive_int, default=2000, help="synthetic rows (default 2,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--through", choices=demo.STAGES, default="dataloader", help="stop after this stage")

    add_clip_arguments(p, default_model="laion-hf-world")  # the world's teacher CLIP
    p.set_defaults(
        func=lambda a: (
            demo.run_demo(
                a.out,
                a.rows,
                seed=a.seed,
                stages_through=a.through,
                clip_model=a.clip_model,
                clip_pretrained=a.clip_pretrained,
                clip_device=a.clip_device,
            )
            and 0
        )
    )
