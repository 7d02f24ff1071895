"""``python -m difflab_core.testbed train NAME [--out DIR]`` and ``python -m difflab_core.testbed verify NAME``.

``train`` runs a recipe (resumable: rerun the same command after an interruption) and writes the weights and
their card to ``--out`` (default: a ``testbed-NAME`` folder here); copy both into ``weights/`` to ship them.
``verify`` regenerates images from the shipped (or ``--weights``) model and prints the measured behaviour
as JSON.

Names: ``memorization`` (the text-to-image testbed) and the digits recipes ``digits``, ``digits-subset``,
``digits-memorized``, ``digits-classifier``, ``digits-noisy-classifier`` (``verify digits`` measures them all).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .digits import RECIPES as DIGITS_RECIPES

NAMES = ("memorization", *DIGITS_RECIPES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m difflab_core.testbed", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a testbed model by its recipe")
    train.add_argument("name", choices=NAMES)
    train.add_argument("--out", "--output", dest="out", type=Path, default=None)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--classes", default=None, help="digits recipes: comma-separated classes, e.g. 0,1,2")
    verify = sub.add_parser("verify", help="measure a testbed model from freshly generated images")
    verify.add_argument("name", choices=("memorization", "digits"))
    verify.add_argument("--weights", type=Path, default=None)
    verify.add_argument("--guidance-scale", type=float, default=None)
    verify.add_argument("--guidance-rescale", type=float, default=None)
    verify.add_argument("--steps", type=int, default=None, help="number of inference steps")
    verify.add_argument("--n-global", type=int, default=10, help="images per global prompt")
    args = parser.parse_args(argv)

    if args.command == "train":
        out = args.out or Path(f"testbed-{args.name}")
        if args.name == "memorization":
            from .memorization import train_memorization_testbed

            path = train_memorization_testbed(out, max_steps=args.max_steps)
        else:
            from .digits import train_digits

            classes = None if args.classes is None else [int(c) for c in args.classes.split(",") if c.strip()]
            path = train_digits(args.name, out, classes=classes, max_steps=args.max_steps)
        print(json.dumps({"weights": str(path), "card": str(path.with_suffix(".json"))}))
        return 0
    if args.name == "digits":
        from .digits import verify_digits

        print(json.dumps(verify_digits(), indent=2))
        return 0
    from .memorization import load_memorization_testbed
    from .verify import measure_memorization

    overrides = {
        key: value
        for key, value in {
            "guidance_scale": args.guidance_scale,
            "guidance_rescale": args.guidance_rescale,
            "num_inference_steps": args.steps,
        }.items()
        if value is not None
    }
    testbed = load_memorization_testbed(args.weights)
    print(json.dumps(measure_memorization(testbed, n_global=args.n_global, **overrides), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
