"""Can the demo bind its address? Checked before Gradio loads, so a taken port or a host that is
not an address of this machine fails in one line, in a fraction of a second."""

from __future__ import annotations

import errno
import socket

from lepton_vision.config.errors import LeptonError

#: The ports Gradio tries when no --port is given (7860 and the next 99).
GRADIO_PORTS = range(7860, 7960)


def bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound for a TCP server ("" -> None: it can).

    The check binds and closes a socket at once (SO_REUSEADDR, as uvicorn sets it), so it sees
    what the server will see: a port in use, an address not on this machine, a name that does not
    resolve, a port below 1024 without the right to bind it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r} ({exc.strerror}); expected an address or name of this machine"
    last = None
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
                return None
            except OSError as exc:
                last = exc
    if last is None:
        return f"host {host!r} has no address to bind"
    if last.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another demo or server?)"
    if last.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine, so the demo cannot listen on it"
    if last.errno == errno.EACCES:
        return f"no permission to bind port {port} on {host} (ports below 1024 need privileges)"
    return f"cannot bind {host}:{port}: {last.strerror or last}"


def check_bind(host: str, port: int | None) -> None:
    """Raise a one-line LeptonError when the demo could not listen on ``host:port`` (``port`` None:
    any of Gradio's default ports :data:`GRADIO_PORTS`).

    Raises:
        LeptonError: The port is taken, the host is not an address of this machine or does not resolve.
    """
    if port is not None:
        why = bind_error(host, port)
        if why:
            raise LeptonError(why, hint="Pass another --port, stop what holds it, or use --host 127.0.0.1.")
        return
    first = None
    for p in GRADIO_PORTS:
        why = bind_error(host, p)
        if why is None:
            return
        first = first or why
        if "in use" not in why:  # a bad host fails the same way on every port
            break
    raise LeptonError(first or f"cannot bind {host}", hint="Pass a free --port or another --host.")
