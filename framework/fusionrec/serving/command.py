"""``fusionrec serve BUNDLE``: load an exported bundle, check it, and serve it over HTTP (uvicorn).

``python -m fusionrec.serving BUNDLE --runtime onnx`` is the same command without the training stack
(no torch, Lightning, pluggy or pandas imported), for a service image with onnxruntime alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fusionrec.errors import CommandParser, ConfigError, FusionrecError
from fusionrec.serving.bundle import MANIFEST, ONNX_GRAPH, PROGRAM, Bundle
from fusionrec.serving.features import RequestError
from fusionrec.serving.fused_score import COMBINATIONS, FusedScore

RUNTIMES = {"pt2": (PROGRAM, "torch"), "onnx": (ONNX_GRAPH, "onnxruntime")}  # the graph it runs, the package
INSTALL_HINT = "pip install 'fusionrec[serve]'"


def open_bundle(directory: str | Path, runtime: str) -> Bundle:
    """Load ``directory`` with ``runtime`` (``pt2`` or ``onnx``), which verifies its files and manifest
    (:mod:`fusionrec.serving.bundle`), then score its golden rows; any problem is one ConfigError naming it."""
    directory = Path(directory)
    program, package = RUNTIMES[runtime]
    if (directory / MANIFEST).is_file() and not (directory / program).is_file():
        hint = (" (fusionrec export writes it when the onnx extra is installed and --no-onnx is not given)"
                if runtime == "onnx" else "")
        raise ConfigError(f"{directory}: no {program}, which --runtime {runtime} runs{hint}")
    from fusionrec.serving import load, load_onnx

    try:
        bundle = (load if runtime == "pt2" else load_onnx)(directory)
    except ImportError as error:
        raise ConfigError(f"--runtime {runtime} needs {package}, which does not import here ({error})") from None
    try:
        bundle.check()
    except (AssertionError, RequestError) as error:
        raise ConfigError(f"{directory}: the golden rows do not score as at export: {error}") from None
    return bundle


def _parser() -> CommandParser:
    parser = CommandParser(prog="fusionrec serve", description="Serve an exported bundle over HTTP: POST /score, "
                     "POST /recommend, GET /healthz, GET /metadata (docs/serving.md).")
    parser.add_argument("bundle", help="the directory written by fusionrec export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="pt2",
                        help="pt2: the torch.export program (needs torch); onnx: model.onnx on onnxruntime")
    parser.add_argument("--max-batch-rows", type=int, default=1024,
                        help="rows per model run; a request with more is refused with 413 (default: 1024)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0,
                        help="how long a model run waits for more requests to merge (default: 0, merging "
                             "only the requests already waiting, which under load is a full batch)")
    parser.add_argument("--score", help="the fused score /recommend ranks by, YAML: {task: weight} or "
                                        "{task: {weight: W, offset: C}} (default: the bundle's own, if any)")
    parser.add_argument("--combine", choices=COMBINATIONS, help="with --score: product (default) or sum")
    parser.add_argument("--content-root", help="the directory image and audio paths in requests are read from, "
                        "relative to it; without it the service reads no files and such fields take item vectors")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level; warning drops the per-request access log (default: info)")
    return parser


def run_serve(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a port is a number from 0 to 65535")
    if args.combine and not args.score:
        raise ConfigError("--combine applies to --score: give both")
    try:
        import uvicorn

        from fusionrec.serving.server import create_app
    except ImportError as error:
        raise ConfigError(f"fusionrec serve needs FastAPI and uvicorn ({error}): {INSTALL_HINT}") from None
    bundle = open_bundle(args.bundle, args.runtime)
    fused_score = FusedScore.parse(args.score, args.combine or "product", bundle.tasks) if args.score else None
    if args.content_root is not None and not Path(args.content_root).is_dir():
        raise ConfigError(f"--content-root {args.content_root}: not a directory")
    app = create_app(bundle, max_batch_rows=args.max_batch_rows, max_wait_ms=args.max_wait_ms,
                     fused_score=fused_score, content_root=args.content_root)
    print(f"fusionrec serve: {args.bundle} ({args.runtime}; tasks: {', '.join(bundle.tasks)}) "
          f"on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusionrec.serving``: ``fusionrec serve`` without importing the training stack."""
    try:
        return run_serve(sys.argv[1:] if argv is None else argv)
    except FusionrecError as error:
        print(f"fusionrec: error: {error}", file=sys.stderr)
        return 2
