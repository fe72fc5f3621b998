"""Serve an ONNX graph in netron, on localhost unless told otherwise."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from exporters.errors import ExportError


@dataclass(frozen=True)
class Served:
    url: str
    host: str
    port: int
    browser_opened: bool


def has_display() -> bool:
    """Whether a browser could open a window: never on a headless Linux box or over SSH."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def find_browser() -> webbrowser.BaseBrowser | None:
    """The browser ``rtk view`` opens: none without a display, else the one Python's
    ``webbrowser`` picks (``$BROWSER`` first); ``rtk doctor`` reports the same answer."""
    if not has_display():
        return None
    try:
        return webbrowser.get()
    except webbrowser.Error:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def serve(model: Path, *, host: str = "127.0.0.1", port: int | None = None, browse: bool) -> Served:
    """Start netron's server in the background (``netron.wait()`` blocks until Ctrl-C)."""
    import netron

    if not model.is_file():
        raise ExportError(f"model {model} does not exist")
    if port is not None and not 1 <= port <= 65535:
        raise ExportError(f"--port must be between 1 and 65535, got {port}")
    port = port or free_port(host)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # netron prints; only the CLI may
            address = netron.serve(str(model), None, (host, port), False)
    except OSError as exc:
        raise ExportError(f"netron cannot listen on {host}:{port} ({exc.strerror})") from exc
    if address is None:
        raise ExportError(f"netron did not start on {host}:{port}; try another --port")
    bound_host, bound_port = address
    url = f"http://{bound_host}:{bound_port}"
    opened = False
    browser = find_browser() if browse else None
    if browser is not None:
        opened = browser.open(url)
    return Served(url=url, host=bound_host, port=bound_port, browser_opened=opened)
