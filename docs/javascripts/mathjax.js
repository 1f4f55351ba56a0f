// MathJax 3 settings. It typesets the formulas pymdownx.arithmatex marks in the Markdown pages and
// the API reference (class "arithmatex", \( \) and \[ \] delimiters), and the $ ... $ and $$ ... $$
// formulas of the tutorials' Markdown cells (class "jp-RenderedMarkdown"); nothing else on a page.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown",
  },
};

// Instant navigation (mkdocs-material) replaces the page without reloading: typeset it again.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise();
  });
}
