"""Report tables: a table with a column per metric stays within the page's width."""

from vfnb.study import REPORT_CSS
from vfnb.study.report import WIDE_TABLE_COLUMNS, html_table


def test_a_table_with_many_columns_is_set_wide_and_a_narrow_one_is_not():
    many = [f"metric {i}" for i in range(WIDE_TABLE_COLUMNS + 1)]
    wide = html_table(many, [("<b>model</b>", ["0.5"] * (len(many) - 1))])
    assert wide.startswith("<div class='wide'><table>") and wide.endswith("</table></div>")
    assert "&lt;b&gt;model&lt;/b&gt;" in wide  # still escaped once
    narrow = html_table(["Model", "Macro-F1"], [("ce", ["0.5"])])
    assert narrow.startswith("<table>") and "wide" not in narrow
    assert ".wide { overflow-x: auto; }" in REPORT_CSS  # the wrapper scrolls inside the page
