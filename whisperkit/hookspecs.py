"""Hook specifications of the ``whisperkit`` pluggy project. Only specs live here.

A backend plugin is a module (or any object) exposed under the ``whisperkit.backends`` entry-point
group, with a function marked ``@whisperkit.hookimpl``::

    [project.entry-points."whisperkit.backends"]
    mybackend = "my_package.my_backend"
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("whisperkit")


@hookspec
def whisperkit_backends():
    """Return a list of `whisperkit.backend.Backend` instances that this plugin provides.

    Called once when the registry is built.  Must be cheap: import heavy dependencies lazily (in the
    backend's methods) or catch their ImportError and report it from ``unavailable_reason()``, so a
    missing dependency lists the backend as unavailable instead of breaking the others.
    """
