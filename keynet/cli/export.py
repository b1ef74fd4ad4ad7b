"""``keynet export OUT.onnx``: the response network, or with ``--detection`` detection up to top-k."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError, add_model_options, check_positive, guard_outputs, output_file_parent, require

HELP = "write the network, or detection up to top-k, as ONNX"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="ONNX file to write")
    add_model_options(p, device=False)
    p.add_argument("--detection", action="store_true",
                   help="export detection up to the global top-k (K = --num-keypoints) instead of the response network")
    p.add_argument("--compat", choices=["kornia"], default=None, help="with --detection: kornia's level-to-image mapping")
    p.add_argument("--up-levels", type=int, choices=[0, 1], default=None,
                   help="with --detection: pyramid levels upsampled above full resolution (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the weights file)")


def main(args: argparse.Namespace) -> int:
    require("onnx", "onnx", "export")
    import warnings

    from keynet.detector import KeyNetDetector
    from keynet.export import detector_min_side, export_detector_onnx, export_onnx
    from keynet.weights import load_model

    check_positive(args.num_keypoints, "--num-keypoints")
    guard_outputs([args.out], [args.weights] if args.weights else [], args.overwrite)
    try:
        net = load_model(args.weights, args.model)
        det = None
        if args.detection:
            det = KeyNetDetector(network=net, num_keypoints=args.num_keypoints, compat=args.compat,
                                 **({} if args.up_levels is None else {"up_levels": args.up_levels}))
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    output_file_parent(args.out, "OUT")
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
