"""tools/check_rendered.py: a page with unrendered math or roles fails, a clean page passes."""

from __future__ import annotations

import check_rendered

PAGE = """<html><body><div class="sidebar">$ site nav</div><main class="bd-main"><article>
{body}
</article></main></body></html>"""

# What Sphinx writes for a clean paragraph: math in span.math / div.math, code in pre/code.
CLEAN = PAGE.format(
    body=r"""
<p>Substituting gives <span class="math notranslate nohighlight">\(\bar x_2 = \bar y_2
+ (\partial F/\partial x_2)^\top \bar z_1\)</span>, as in
<a href="#equation-x">(9)</a>, see <a class="reference internal" href="#fig">Fig. 3</a>.</p>
<div class="math notranslate nohighlight">\[\frac{\partial L}{\partial x}\]</div>
<div class="cell_output"><pre>cost: $5 {cite}`x`</pre></div>
<p>Install with <code>pip install "revlib[train]"</code>;
the role <code>{cite:p}`key`</code> cites.</p>
<script>var a = "$\\frac";</script>
"""
)

# The chapter 3 paragraph as Markdown parsed it: a formula continued on a "+" line became a bullet.
BROKEN_BULLET = PAGE.format(
    body=r"""
<p>Substituting (8) into (9) gives, in one line,
$\bar x_2 = \bar y_2 + (\partial F/\partial x_2)^\top \bar y_1</p>
<ul><li><p>(\partial F/\partial x_2)^\top \bar y_2: the transposed Jacobian</p></li></ul>
"""
)

UNRESOLVED_ROLES = {
    "cite": "<p>as shown by {cite:p}`gomez2017revnet`.</p>",
    "eq": "<p>from {eq}`eq-alg1-dz1`.</p>",
    "ref": "<p>see {ref}`ch-coupling`.</p>",
    "numref": "<p>see {numref}`fig-memory-depth`.</p>",
}


def test_clean_page_passes():
    assert check_rendered.check_html(CLEAN) == []


def test_broken_bullet_fails_and_names_the_snippet():
    findings = check_rendered.check_html(BROKEN_BULLET, page="ch3.html")
    kinds = {f.pattern for f in findings}
    assert {"$", "\\bar", "\\partial"} <= kinds
    assert all(f.page == "ch3.html" for f in findings)
    assert any("Substituting" in f.snippet for f in findings)


def test_each_unresolved_role_fails():
    for role, body in UNRESOLVED_ROLES.items():
        findings = check_rendered.check_html(PAGE.format(body=body))
        assert [f.pattern for f in findings] == ["unresolved role"], role


def test_table_printed_as_text_fails():
    printed = PAGE.format(body="<p>| model | bytes |\n|---|---:|\n| RevNet | 12 |</p>")
    rendered = PAGE.format(body="<table><tr><th>model</th></tr><tr><td>RevNet</td></tr></table>")
    smart_dashes = PAGE.format(body="<p>| model | bytes | |\u2014|\u2014| | RevNet | 12 |</p>")
    assert [f.pattern for f in check_rendered.check_html(printed)] == ["unrendered table"]
    assert [f.pattern for f in check_rendered.check_html(smart_dashes)] == ["unrendered table"]
    assert check_rendered.check_html(rendered) == []


def test_frac_outside_math_fails():
    findings = check_rendered.check_html(PAGE.format(body=r"<p>the ratio \frac{a}{b} in prose</p>"))
    assert [f.pattern for f in findings] == ["\\frac"]


def test_main_exit_status(tmp_path, capsys):
    clean, broken = tmp_path / "clean.html", tmp_path / "broken.html"
    clean.write_text(CLEAN)
    broken.write_text(BROKEN_BULLET)
    assert check_rendered.main([str(clean)]) == 0
    assert check_rendered.main([str(clean), str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"{broken}: $:" in out
    assert not any(line.startswith(str(clean)) for line in out.splitlines())
