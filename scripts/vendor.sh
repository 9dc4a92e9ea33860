#!/usr/bin/env bash
# Copy the browser assets the book serves itself (pinned in package.json) from node_modules
# into _vendor/vendor/, which _config.yml publishes as /vendor/ (html_extra_path).
# Not under _static/: Jupyter Book 1 would inject every script there into every page.
set -euo pipefail
cd "$(dirname "$0")/.."
out=_vendor/vendor
rm -rf _vendor
mkdir -p "$out/html-manager" "$out/modules"
cp -r node_modules/mathjax/es5 "$out/mathjax"
cp node_modules/requirejs/require.js "$out/require.js"
find node_modules/@jupyter-widgets/html-manager/dist -maxdepth 1 -type f ! -name '*.map' \
  -exec cp {} "$out/html-manager/" \;
# Set-up for the widget manager, loaded just before it:
# - it derives the address of its fonts from its RequireJS module path: map that path to the
#   copy served here, relative to this script's own address;
# - it typesets widget labels with MathJax 2's API (MathJax.Hub.Queue); the book loads
#   MathJax 3, so give it that one call, mapped to MathJax 3's typesetPromise.
cat > "$out/widgets-setup.js" <<'JS'
(function () {
  var here = document.currentScript.src.split("?")[0];
  var base = here.slice(0, here.lastIndexOf("/") + 1);
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": base + "html-manager" } });
  window.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (mj && !mj.Hub) {
      mj.Hub = {
        Queue: function (call) {
          var element = call[2];
          if (element && mj.typesetPromise) { mj.typesetPromise([element]); }
        }
      };
    }
  });
})();
JS
touch _vendor/.stamp
