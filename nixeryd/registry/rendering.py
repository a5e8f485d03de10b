"""
Coroutine request handlers, tied to their connection: :func:`render_async`.

A handler awaits the image service; a client that goes away cancels its
own wait and nothing else, and nothing is written after it has gone.
"""

from __future__ import annotations

from typing import Callable, Concatenate, Coroutine, ParamSpec

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from nixeryd.core.errors import RegistryError
from nixeryd.registry.responses import request_fields, send_body, write_failure

log = Logger()

P = ParamSpec("P")

Handler = Callable[Concatenate[Request, P],
                   Coroutine[Deferred[object], object, bytes | None]]
"""
A coroutine that answers a request: it sets the status and headers and
returns the body, or ``None`` if it has arranged to finish the response
itself (streaming).  It may raise
:class:`~nixeryd.core.errors.RegistryError` for a JSON error.
"""


def render_async(request: Request, handler: Handler[P],
                 *args: P.args, **kwargs: P.kwargs) -> int:
    """
    Run ``handler(request, *args, **kwargs)`` for ``request`` and return
    ``NOT_DONE_YET``, as a resource's ``render`` does when it answers later.

    If the client disconnects first, the handler's wait is cancelled:
    cancelling the Deferred of this request cancels only what this
    coroutine awaits, never work shared with other requests.  Nothing is
    written after a disconnect, and any error in the response code itself
    is logged rather than lost.
    """
    finished = request.notifyFinish()
    result = Deferred.fromCoroutine(handler(request, *args, **kwargs))

    def cancel_wait(reason: Failure) -> None:
        result.cancel()

    finished.addErrback(cancel_wait)

    def respond(body: bytes | None) -> None:
        if body is not None and not finished.called:
            send_body(request, body)

    def fail(failure: Failure) -> None:
        if finished.called:
            if not isinstance(failure.value, (CancelledError, RegistryError)):
                log.failure("Error after the client of {method} {path} went away",
                            failure, **request_fields(request))
            return
        write_failure(request, failure)

    def log_error(failure: Failure) -> None:
        log.failure("Could not answer {method} {path}",
                    failure, **request_fields(request))

    result.addCallbacks(respond, fail).addErrback(log_error)
    return NOT_DONE_YET
