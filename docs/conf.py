"""Sphinx configuration: MyST Markdown, furo, autodoc with Google-style docstrings.

The build must pass with ``-W`` offline (CI reaches no documentation site), so intersphinx
reads small inventories written here, at configuration time, from the ``INVENTORIES`` table
below instead of downloading ``objects.inv`` files. The links they produce point at the real
online documentation. ``nitpicky`` stays on: a reference to one of our own objects that does
not exist fails the build, and so does an external one missing from the table (add it there).
"""

from __future__ import annotations

import importlib.metadata
import zlib
from pathlib import Path

project = "plainid-async"
author = "plainid-async developers"
copyright = "plainid-async developers"
release = importlib.metadata.version("plainid-async")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]

# The docstring reference is reStructuredText (docs/reference.rst): GitHub shows the prose
# pages as Markdown with no raw autodoc directive in them.
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
root_doc = "index"

html_theme = "furo"
# The version on every page, the index included (the sidebar title).
html_title = f"plainid-async {release}"
html_static_path = ["_static"]
# Wide tables wrap to the content column instead of overflowing it (docs/_static/tables.css);
# 100-column code lines fit it at 1280 px (docs/_static/code.css).
html_css_files = ["tables.css", "code.css"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

nitpicky = True
# Names that only exist for the type checker, or that no inventory can resolve.
nitpick_ignore = [
    ("py:class", "Self"),
    ("py:class", "TracebackType"),
    ("py:class", "types.TracebackType"),
    # The client secret's wrapper is internal: CacheKey.client_secret's type names it.
    ("py:class", "plainid_async._secret.Secret"),
    # The private protocol of what the integrations call on a provider (plainid_async._source):
    # the docs describe its three members where they matter (httpx.md, "Test doubles").
    ("py:class", "TokenSource"),
    ("py:class", "plainid_async._source.TokenSource"),
    # Their private base, which holds what both have: provider, origins, the checks.
    ("py:class", "plainid_async._source.TokenScope"),
    # The httpx BearerAuth's private base: httpx.Auth and httpx2.Auth, whichever are installed.
    ("py:class", "plainid_async.httpx._Auth"),
]

# -- intersphinx, offline -------------------------------------------------------------------
#
# Each entry: (object name, domain:role, page#anchor with "$" for the name). Only what our
# docstrings and pages refer to; the build says which one is missing.
INVENTORIES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "python": (
        "https://docs.python.org/3/",
        [
            ("ValueError", "py:exception", "library/exceptions.html#$"),
            ("RuntimeError", "py:exception", "library/exceptions.html#$"),
            ("Exception", "py:exception", "library/exceptions.html#$"),
            ("asyncio.CancelledError", "py:exception", "library/asyncio-exceptions.html#$"),
            ("asyncio.run", "py:function", "library/asyncio-runner.html#$"),
            ("asyncio.shield", "py:function", "library/asyncio-task.html#$"),
            ("asyncio.AbstractEventLoop", "py:class", "library/asyncio-eventloop.html#$"),
            ("concurrent.futures.Future", "py:class", "library/concurrent.futures.html#$"),
            ("contextlib.AbstractAsyncContextManager", "py:class", "library/contextlib.html#$"),
            ("contextlib.AsyncExitStack", "py:class", "library/contextlib.html#$"),
            ("collections.abc.Mapping", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Awaitable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.AsyncIterator", "py:class", "library/collections.abc.html#$"),
            ("enum.Enum", "py:class", "library/enum.html#$"),
            ("logging", "py:module", "library/logging.html#module-$"),
            ("os.environ", "py:data", "library/os.html#$"),
            ("ssl.SSLContext", "py:class", "library/ssl.html#$"),
            ("ssl.create_default_context", "py:function", "library/ssl.html#$"),
            ("time.monotonic", "py:function", "library/time.html#$"),
            ("time.time", "py:function", "library/time.html#$"),
            ("typing.Protocol", "py:class", "library/typing.html#$"),
            ("typing.Any", "py:data", "library/typing.html#$"),
            ("bool", "py:class", "library/functions.html#$"),
            ("int", "py:class", "library/functions.html#$"),
            ("float", "py:class", "library/functions.html#$"),
            ("str", "py:class", "library/stdtypes.html#$"),
            ("bytes", "py:class", "library/stdtypes.html#$"),
            ("dict", "py:class", "library/stdtypes.html#$"),
            ("list", "py:class", "library/stdtypes.html#$"),
            ("tuple", "py:class", "library/stdtypes.html#$"),
            ("object", "py:class", "library/functions.html#$"),
            ("None", "py:data", "library/constants.html#$"),
        ],
    ),
    "aiohttp": (
        "https://docs.aiohttp.org/en/stable/",
        [
            ("aiohttp.ClientSession", "py:class", "client_reference.html#$"),
            ("aiohttp.ClientRequest", "py:class", "client_reference.html#$"),
            ("aiohttp.ClientResponse", "py:class", "client_reference.html#$"),
            ("aiohttp.ClientTimeout", "py:class", "client_reference.html#$"),
            ("aiohttp.ClientError", "py:class", "client_reference.html#$"),
            ("aiohttp.DigestAuthMiddleware", "py:class", "client_reference.html#$"),
            ("aiohttp.web.Application", "py:class", "web_reference.html#$"),
            ("aiohttp.web.Application.cleanup_ctx", "py:attribute", "web_reference.html#$"),
            ("aiohttp.web.AppKey", "py:class", "web_reference.html#$"),
            ("aiohttp.web.AppRunner", "py:class", "web_reference.html#$"),
            ("aiohttp.web.Request", "py:class", "web_reference.html#$"),
            ("aiohttp.web.Response", "py:class", "web_reference.html#$"),
            ("aiohttp.web.StreamResponse", "py:class", "web_reference.html#$"),
        ],
    ),
    "httpx": (
        "https://www.python-httpx.org/",
        [
            ("httpx.Auth", "py:class", "advanced/authentication/#custom-authentication-schemes"),
            ("httpx.AsyncClient", "py:class", "api/#asyncclient"),
            ("httpx.Client", "py:class", "api/#client"),
            ("httpx.Request", "py:class", "api/#request"),
            ("httpx.Response", "py:class", "api/#response"),
            ("httpx.URL", "py:class", "api/#url"),
            ("httpx.ByteStream", "py:class", "api/#request"),
        ],
    ),
    "yarl": (
        "https://yarl.aio-libs.org/en/stable/",
        [("yarl.URL", "py:class", "api/#$")],
    ),
    "opentelemetry": (
        "https://opentelemetry-python.readthedocs.io/en/latest/",
        [
            ("opentelemetry.metrics.MeterProvider", "py:class", "api/metrics.html#$"),
            ("opentelemetry.trace.TracerProvider", "py:class", "api/trace.html#$"),
        ],
    ),
}

_INVENTORY_DIR = Path(__file__).parent / "_build" / "inventories"


def _write_inventory(name: str, entries: list[tuple[str, str, str]]) -> str:
    """Write a Sphinx v2 inventory for ``entries``; return its path relative to this dir."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {name}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = "".join(f"{obj} {role} 1 {uri} -\n" for obj, role, uri in entries)
    _INVENTORY_DIR.mkdir(parents=True, exist_ok=True)
    path = _INVENTORY_DIR / f"{name}.inv"
    path.write_bytes(header.encode() + zlib.compress(lines.encode()))
    return str(path.relative_to(Path(__file__).parent))


intersphinx_mapping = {
    name: (url, _write_inventory(name, entries)) for name, (url, entries) in INVENTORIES.items()
}


# Annotations that name a type imported only for the type checker (``if TYPE_CHECKING:``)
# reach Sphinx as bare names; map them to the full names the inventories know.
TYPE_ALIASES = {
    "URL": "yarl.URL",
    "AbstractAsyncContextManager": "contextlib.AbstractAsyncContextManager",
    "aiohttp.client.ClientSession": "aiohttp.ClientSession",
    "plainid_async._cache.Flight": "plainid_async.testing.Flight",
    "MeterProvider": "opentelemetry.metrics.MeterProvider",
    "TracerProvider": "opentelemetry.trace.TracerProvider",
}


def _expand_alias(_app: object, _env: object, node: dict[str, str], _contnode: object) -> None:
    """Rewrite a bare name to its full name; intersphinx, which runs next, resolves it."""
    target = TYPE_ALIASES.get(node.get("reftarget", ""))
    if target is not None:
        node["reftarget"] = target


def setup(app: object) -> None:
    """Register the alias expansion ahead of intersphinx (priority 500)."""
    app.connect("missing-reference", _expand_alias, priority=400)  # type: ignore[attr-defined]
