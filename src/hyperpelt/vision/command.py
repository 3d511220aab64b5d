"""The ``hyperpelt features`` command: its arguments and its call into ``extract_folder``."""

from __future__ import annotations

import argparse

from ..arguments import positive_int


def cmd_features(args) -> int:
    """Extract image features once into a safetensors cache; images already in the cache are reused."""
    from ..quiet import quiet_libraries
    from .folder import extract_folder

    quiet_libraries()
    extract_folder(args.images, args.out, args.extractor, args.batch_size, progress=not args.quiet)
    return 0


def add_features_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="extract image features into a cache",
                       description=cmd_features.__doc__)
    p.set_defaults(func=cmd_features)
    p.add_argument("images", metavar="IMAGES", help="a folder of .jpg/.jpeg/.png (searched recursively), a "
                   "text file listing image paths, or easy-vqa, easy-vqa:train, easy-vqa:test")
    p.add_argument("--out", required=True, metavar="FILE", help="the cache, e.g. features.safetensors")
    p.add_argument("--extractor", default=None, metavar="NAME",
                   help="efficientnet-lite0 (default, offline), clip:<hub id>, clip-rn101")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward (default: 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
