"""Serve an ONNX graph in netron, on localhost unless told otherwise.

netron serves every file in the model's folder (``/data/<name>``), and a run folder holds the
checkpoints and the training config; it also writes the file's name and path into its page
unescaped. So the model is always served from a copy in a private temporary folder of its own
(a page on loopback is reachable by any page the browser runs), under a name with no character
HTML could read as markup.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import shutil
import socket
import sys
import tempfile
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
    exposed: bool  # bound beyond loopback: whoever reaches the port can read the graph
    private_copy: Path  # the folder served instead of the model's own; stop() removes it


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


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``; a name other than localhost may resolve
    to any interface, so it counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_file_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``.``, ``_`` and ``-`` replaced by
    ``_``: netron writes it into HTML and a URL as it is."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe or "model.onnx"


def serve(model: Path, *, host: str = "127.0.0.1", port: int | None = None, browse: bool) -> Served:
    """Start netron's server in the background (``netron.wait()`` blocks until Ctrl-C); call
    ``stop`` afterwards."""
    import netron

    if not model.is_file():
        raise ExportError(f"model {model} does not exist")
    if port is not None and not 1 <= port <= 65535:
        raise ExportError(f"--port must be between 1 and 65535, got {port}")
    exposed = not is_loopback(host)
    # mkdtemp makes the folder 0700: other local users cannot read or swap the copy.
    private_copy = Path(tempfile.mkdtemp(prefix="rtk-view-"))
    try:
        served_file = private_copy / safe_file_name(model.name)
        shutil.copyfile(model, served_file)
        port = port or free_port(host)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # netron prints; only the CLI may
                address = netron.serve(str(served_file), None, (host, port), False)
        except OSError as exc:
            raise ExportError(f"netron cannot listen on {host}:{port} ({exc.strerror})") from exc
        if address is None:
            raise ExportError(f"netron did not start on {host}:{port}; try another --port")
    except BaseException:
        shutil.rmtree(private_copy, ignore_errors=True)
        raise
    bound_host, bound_port = address
    url = f"http://{bound_host}:{bound_port}"
    opened = False
    browser = find_browser() if browse else None
    if browser is not None:
        opened = browser.open(url)
    return Served(
        url=url,
        host=bound_host,
        port=bound_port,
        browser_opened=opened,
        exposed=exposed,
        private_copy=private_copy,
    )


def stop(served: Served) -> None:
    """Stop netron's server and remove the private copy, if one was made."""
    import netron

    netron.stop((served.host, served.port))
    shutil.rmtree(served.private_copy, ignore_errors=True)
