"""Page scripts: keep each inline script of a page once; give the single-page build the widgets.

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


def _single_page_widgets(app, pagename, templatename, context, doctree):
    """In the single-page build (the print edition), load every notebook's widget state.

    myst-nb adds the widget state and the widget manager's scripts only to the pages of the
    notebooks that hold widgets; the single page is the root document, which holds none,
    so without this hook the print edition would show no widget at all.
    """
    if app.builder.name != "singlehtml":
        return
    from myst_nb.sphinx_ import NbMetadataCollector

    scripts = {}
    for docname in sorted(app.env.found_docs):
        for key, (path, kwargs) in NbMetadataCollector.get_js_files(app.env, docname).items():
            if key == "ipywidgets_state":
                app.add_js_file(path, **kwargs)  # one state per notebook, all read by the manager
            else:
                scripts.setdefault(key, (path, kwargs))
    for key in sorted(scripts):  # ipywidgets_0, _1, ...: require.js, set-up, the manager
        path, kwargs = scripts[key]
        app.add_js_file(path, **kwargs)


def setup(app):
    """Register the page-context hooks, and myst-nb's hidden-cell node for the single page.

    Sphinx looks up a builder's node handlers by the builder's name first and falls back to its
    format only when no extension registered any handler under that name; another extension
    registers some for "singlehtml", so myst-nb's html-only handlers for cells tagged
    hide-input / hide-output would be missing from the print edition.
    """
    from myst_nb.sphinx_ import HideCodeCellNode, depart_HideCellInput, visit_HideCellInput

    app.add_node(HideCodeCellNode, override=True, singlehtml=(visit_HideCellInput, depart_HideCellInput))
    app.connect("html-page-context", _single_page_widgets, priority=400)
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
