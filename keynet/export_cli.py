"""``keynet export OUT.onnx``: the response network, or with ``--detection`` detection up to top-k."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="ONNX file to write (replaced atomically if it exists)")
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--model", choices=["keynet", "tiny"], default="keynet")
    p.add_argument("--detection", action="store_true",
                   help="export detection up to the global top-k instead of the response network")
    p.add_argument("--num-keypoints", type=int, default=2048, help="with --detection: K of the top-k")
    p.add_argument("--compat", choices=["kornia"], default=None, help="with --detection: kornia's level-to-image mapping")
    p.add_argument("--up-levels", type=int, choices=[0, 1], default=None,
                   help="with --detection: pyramid levels upsampled above full resolution (default 1)")


def main(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("onnx") is None:
        print("keynet: export needs the onnx package: pip install 'keynet[onnx]'", file=sys.stderr)
        return 2
    import warnings

    from .detector import KeyNetDetector
    from .export import detector_min_side, export_detector_onnx, export_onnx
    from .weights import load_model

    try:
        net = load_model(args.weights, args.model)
        det = None
        if args.detection:
            det = KeyNetDetector(network=net, num_keypoints=args.num_keypoints, compat=args.compat,
                                 **({} if args.up_levels is None else {"up_levels": args.up_levels}))
    except (FileNotFoundError, ValueError) as e:
        print(f"keynet: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the exporter's notes on constant folding and traced shapes
        warnings.simplefilter("ignore")
        if det is None:
            export_onnx(net, args.out)
            print(f"wrote {args.out}: response network, input 'image' (B,1,H,W) -> 'response' (B,1,H,W)")
        else:
            export_detector_onnx(det, args.out)
            print(f"wrote {args.out}: detection up to the top {args.num_keypoints}, input 'image' (B,1,H,W), "
                  f"images at least {detector_min_side(det)} px per side")
    return 0
