// MathJax 3 settings (MathJax itself is served by the site: docs/hooks/mathjax.py). It typesets only
// the formulas pymdownx.arithmatex marks in the Markdown pages and the API reference (class
// "arithmatex", \( \) and \[ \] delimiters) and the $ ... $ and $$ ... $$ formulas of the tutorials'
// Markdown cells (class "jp-RenderedMarkdown"); code and outputs elsewhere are never touched.
//
// The elements are named to the typesetter (startup.elements) instead of the usual
// ignoreHtmlClass ".*|" trick: that trick re-ignores every element nested in a processed one, so
// the <p> of a notebook's Markdown cell was skipped and its math stayed raw.
const MATH_ELEMENTS = ".arithmatex, .jp-RenderedMarkdown";

window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  startup: {
    elements: [MATH_ELEMENTS],
  },
};

// Instant navigation (mkdocs-material) replaces the page without reloading: typeset it again.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (!window.MathJax || !MathJax.startup || !MathJax.startup.output) return;
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise(Array.from(document.querySelectorAll(MATH_ELEMENTS)));
  });
}
