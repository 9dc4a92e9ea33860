"""Keep each inline script of a page once.

sphinx-thebe 0.3.1 registers its inline configuration script twice under Sphinx 7, and the
second copy fails in the browser ("Identifier 'THEBE_JS_URL' has already been declared").
The browser test (tests/test_book.py) checks that no page logs a JavaScript error.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body") if not isinstance(script, str) else None
        key = ("body", body) if body else ("file", str(script))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    """Register the page-context hook."""
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
