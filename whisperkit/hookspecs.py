"""The ``whisperkit`` pluggy project: its hook specification and the marker that implements it.

A backend plugin is a module (or any object) exposed under the ``whisperkit.backends`` entry-point
group, with a function marked ``@whisperkit.hookimpl`` (this module's `hookimpl`)::

    [project.entry-points."whisperkit.backends"]
    mybackend = "my_package.my_backend"
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("whisperkit")
hookimpl = pluggy.HookimplMarker("whisperkit")


@hookspec
def whisperkit_backends():
    """Return a list of `whisperkit.backend.Backend` instances that this plugin provides.

    Called once when the registry is built.  Must be cheap: import heavy dependencies lazily (in the
    backend's methods) or catch their ImportError and report it from ``unavailable_reason()``, so a
    missing dependency lists the backend as unavailable instead of breaking the others.
    """
