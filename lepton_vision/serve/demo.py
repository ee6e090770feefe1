"""``lepton-vision demo``: a Gradio page for any export, served safely on this machine.

:func:`build_demo` reads ``EXPORT_DIR/bundle.json`` and asks the bundle's kind for its page
(``kinds/<kind>/demo.py``); :func:`launch_demo` serves it on 127.0.0.1 (no share link, no
analytics, an upload size limit, a login with ``--auth``). ``lepton-vision demo EXPORT_DIR`` and
``apps/<task>.py`` both come here.
"""

from __future__ import annotations

import os

# Before gradio (and huggingface_hub) are imported: no analytics, update checks or hub lookups,
# so the server makes no outbound connection (stack.md section 8).
for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1"), ("NO_ALBUMENTATIONS_UPDATE", "1"),
                     ("TF_CPP_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from lepton_vision.config.errors import LeptonError  # noqa: E402
from lepton_vision.export.bundle import load_bundle_json  # noqa: E402
from lepton_vision.serve.predictor import BACKENDS  # noqa: E402
from lepton_vision.serve.ui import DEFAULT_MAX_PIXELS, MAX_VIDEO_FRAMES, card_markdown  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
#: Largest upload Gradio accepts (images, DICOM and videos alike).
DEFAULT_MAX_FILE_SIZE = "100mb"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def model_card_markdown(bundle: dict[str, Any], backend_text: str = "") -> str:
    """The model card of any bundle as Markdown: intended use, operating point, cross-validated
    metrics with their CIs (the bundle's kind writes those), int8 recommendation, data
    fingerprint, recipe and versions."""
    from lepton_vision.kinds import kind_of

    section = kind_of(bundle.get("kind", "binary_classification")).demo().card_section(bundle)
    return card_markdown(bundle, section, backend_text)


def resolve_export_dir(path: str | Path) -> Path:
    """``path`` if it holds bundle.json, else ``path/export`` (a run directory) if that does.

    Raises:
        ExportError: Neither holds a readable bundle.json (the message says what was found).
    """
    path = Path(path)
    if not (path / "bundle.json").is_file() and (path / "export" / "bundle.json").is_file():
        path = path / "export"
    load_bundle_json(path)  # raises the one-line ExportError
    return path


def build_demo(export_dir: str | Path, backend: str = "auto",
               examples: Sequence[str | Path | tuple[str, Path]] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_video_frames: int = MAX_VIDEO_FRAMES,
               num_threads: int | None = None) -> gr.Blocks:
    """The demo page for an export, laid out for its bundle ``kind``.

    Args:
        export_dir: ``RUN/export`` (or ``RUN``).
        backend: "auto", "saved_model", "tflite" or "tflite_int8".
        examples: Example files (paths, or (label, path) pairs); None: a few per label from the
            run's samples.csv; []: no examples.
        max_pixels: Refuse larger images.
        max_video_frames: Frames of one video run at most (detection).
        num_threads: LiteRT threads.

    Returns:
        The Blocks (not launched); ``blocks.lepton_demo`` is the ClassificationDemo/DetectionDemo.

    Raises:
        LeptonError: No readable bundle, unknown backend or missing model file.
    """
    from lepton_vision.kinds import kind_of

    if backend not in BACKENDS:
        raise LeptonError(f"backend must be one of {', '.join(BACKENDS)}. Got {backend!r}.")
    export_dir = resolve_export_dir(export_dir)
    kind = kind_of(load_bundle_json(export_dir).get("kind", "binary_classification"))
    return kind.demo().build_page(export_dir, backend=backend, examples=examples, max_pixels=max_pixels,
                                  max_video_frames=max_video_frames, num_threads=num_threads)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``"user:password"`` -> ``(user, password)``; None stays None.

    Raises:
        LeptonError: Not of the form USER:PASSWORD with both parts non-empty.
    """
    if text is None:
        return None
    user, sep, password = str(text).partition(":")
    if not sep or not user or not password:
        missing = "the ':'" if not sep else ("the user name" if not user else "the password")
        raise LeptonError(f"--auth must be USER:PASSWORD with both parts non-empty, e.g. --auth "
                          f"reviewer:s3cret; the value given lacks {missing}.")
    return user, password


def launch_demo(export_dir: str | Path, host: str = DEFAULT_HOST, port: int | None = None,
                auth: tuple[str, str] | str | None = None, backend: str = "auto",
                max_file_size: str | int = DEFAULT_MAX_FILE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                examples: Sequence[str | Path | tuple[str, Path]] | None = None,
                prevent_thread_lock: bool = False, quiet: bool = False) -> Any:
    """Build and serve the demo: 127.0.0.1 by default, never a share link, no analytics.

    Args:
        export_dir: ``RUN/export`` (or ``RUN``).
        host: Interface to bind; anything but loopback exposes the demo to the network.
        port: Port (None: Gradio's default 7860, or the next free one).
        auth: ``(user, password)`` or ``"user:password"`` for a login page.
        backend: Predictor backend.
        max_file_size: Largest upload (e.g. "100mb").
        max_pixels: Largest image decoded.
        examples: See :func:`build_demo`.
        prevent_thread_lock: Return at once (tests, notebooks) instead of serving until Ctrl+C.
        quiet: Less console output.

    Returns:
        What ``gr.Blocks.launch`` returns (app, local URL, share URL None).
    """
    if isinstance(auth, str):
        auth = parse_auth(auth)
    export_dir = resolve_export_dir(export_dir)
    from lepton_vision.serve.bind import check_bind

    check_bind(host, port)  # before the model loads: a taken port fails in one line
    blocks = build_demo(export_dir, backend=backend, examples=examples, max_pixels=max_pixels)
    demo = blocks.lepton_demo  # type: ignore[attr-defined]
    bundle = demo.bundle
    if not quiet:
        print(f"lepton-vision demo: {bundle.get('task', '?')} ({bundle.get('kind', '?')}) from {export_dir}, "
              f"backend {demo.predictor.backend}; Ctrl+C stops it", flush=True)
    int8 = bundle.get("files", {}).get("tflite_int8", {})
    if demo.predictor.backend == "tflite_int8" and not int8.get("recommended", True):
        print("warning: this export's int8 model is marked NOT recommended (it lost more than the allowed "
              "metric drop); the page shows its predictions anyway. Use --backend tflite for the float model.",
              file=sys.stderr, flush=True)
    if host not in _LOOPBACK:
        print(f"warning: binding {host} makes the demo reachable from other machines"
              + ("" if auth else " WITHOUT a login (add --auth USER:PASSWORD)")
              + "; uploads are kept in Gradio's temp folder for up to 2 hours.", file=sys.stderr, flush=True)
    blocks.queue(default_concurrency_limit=1, max_size=64)
    # quiet: Gradio's own banner suggests share=True, which this demo never uses.
    try:
        result = blocks.launch(
            server_name=host, server_port=port, share=False, auth=auth,
            auth_message="lepton-vision demo: log in with the --auth credentials" if auth else None,
            max_file_size=max_file_size, show_error=False, inbrowser=False, ssr_mode=False, pwa=False,
            mcp_server=False, enable_monitoring=False, prevent_thread_lock=True, quiet=True,
            footer_links=["api", "settings"],
        )
    except OSError as exc:  # taken between check_bind and now, or Gradio found no free port
        from lepton_vision.serve.bind import bind_error

        why = bind_error(host, port) if port is not None else None
        raise LeptonError(why or f"cannot serve the demo on {host}:{port or 'any port 7860-7959'}: "
                          f"{str(exc).splitlines()[0]}",
                          hint="Pass another --port, stop what holds it, or use --host 127.0.0.1.") from exc
    if not quiet:
        print(f"* Running on local URL:  {blocks.local_url}", flush=True)
    if not prevent_thread_lock:
        blocks.block_thread()  # until Ctrl+C
    return result


# ---------------------------------------------------------------------------------------------
# apps/<task>.py


def latest_export(task: str, runs_dir: str | Path) -> Path:
    """The newest finished export of ``task`` under ``runs_dir`` (``runs/*/export/bundle.json``).

    Raises:
        LeptonError: None found (the message says how to train one).
    """
    runs_dir = Path(runs_dir)
    found = []
    for bundle_path in runs_dir.glob("*/export/bundle.json"):
        try:
            task_of = json.loads(bundle_path.read_text(encoding="utf-8")).get("task")
        except (OSError, ValueError):
            continue
        if task_of == task:
            found.append((bundle_path.stat().st_mtime, bundle_path.parent))
    if not found:
        raise LeptonError(f"no finished {task} export under {runs_dir} (looked for */export/bundle.json); "
                          f"train it first: lepton-vision train recipes/{task}/baseline.yaml")
    return max(found)[1]


def app_main(task: str, argv: Sequence[str] | None = None, runs_dir: str | Path = "runs") -> int:
    """Command line of ``apps/<task>.py``: serve EXPORT_DIR, or the newest export of ``task``."""
    p = argparse.ArgumentParser(prog=f"apps/{task}.py", description=f"Gradio demo of a {task} export.")
    p.add_argument("export_dir", nargs="?", type=Path,
                   help=f"RUN/export (default: the newest {task} export under {runs_dir})")
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    args = p.parse_args(argv)
    try:
        export_dir = resolve_export_dir(args.export_dir) if args.export_dir else latest_export(task, runs_dir)
        found = load_bundle_json(export_dir).get("task")
        if found != task:
            raise LeptonError(f"{export_dir} is a '{found}' export; this app serves {task}. Use "
                              f"apps/{found}.py or 'lepton-vision demo {export_dir}'.")
        launch_demo(export_dir, host=args.host, port=args.port, auth=parse_auth(args.auth), backend=args.backend)
    except LeptonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
