"""User strings reach the study's pages as text, never as markup (escaped exactly once)."""

from html.parser import HTMLParser

import nbformat
import pytest

from vfnb.study.report import dataset_sentence, markdown_text, md_table, strip_tags

HOSTILE = ['<svg onload=alert(1)>', '<img src=x onerror=alert(2)>', '[x](javascript:alert(3))',
           '"><script>alert(4)</script>', "&lt;b&gt;"]


class _Elements(HTMLParser):
    """Every start tag of a page and its attributes."""

    def __init__(self):
        super().__init__()
        self.tags, self.handlers, self.links, self.scripts = [], [], [], []
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        self.tags.append(tag)
        self.handlers += [k for k, _ in attrs if k.startswith("on")]
        self.links += [v for k, v in attrs if k in ("href", "src") and v and v.strip().lower().startswith("javascript")]


def _injected(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


class _Data:
    def __init__(self, processed):
        self.processed = processed

    def describe(self):
        return {"synthetic": False, "processed": self.processed, "cases": 3, "vertebrae": 17, "test_note": ""}


def _render(cells) -> str:
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook(cells=cells)
    return HTMLExporter().from_notebook_node(nb)[0]


def test_hostile_dataset_folders_stay_text_in_notebook_pages():
    pytest.importorskip("IPython")
    from vfnb.study.data import data_statement

    cells = []
    for hostile in HOSTILE:
        folder = f"/data/{hostile}/processed"
        statement = data_statement(_Data(folder))
        output = nbformat.v4.new_output("display_data", data={"text/html": statement.data, "text/plain": "-"})
        cells.append(nbformat.v4.new_code_cell("study.data_statement(data)", outputs=[output]))
        cells.append(nbformat.v4.new_markdown_cell(strip_tags(dataset_sentence(_Data(folder).describe()))))
    page = _render(cells)
    found = _injected(page)
    assert "svg" not in found.tags and "img" not in found.tags
    assert not found.handlers and not found.links
    assert not [s for s in found.scripts if "alert(" in s]
    for hostile in HOSTILE:  # shown, escaped exactly once (no double &amp;lt;)
        assert hostile.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page, hostile


@pytest.mark.parametrize("hostile", HOSTILE)
def test_markdown_summaries_show_user_strings_as_text(hostile):
    import mistune

    rendered = mistune.html("\n".join(md_table(["Run", "Grid values"], [(hostile, [hostile])]))
                            + "\n\n" + markdown_text(hostile))
    found = _injected(rendered)
    assert not {"svg", "img", "script", "a"} & set(found.tags)
    assert not found.handlers and not found.links
    assert markdown_text("0.85 [0.73, 0.97]") == "0.85 [0.73, 0.97]"  # no link: left as typed
    assert markdown_text("a|b") == "a\\|b"


def test_the_data_statement_says_the_test_cohort_note_once():
    pytest.importorskip("IPython")
    from vfnb.study.data import data_statement

    class _Enriched(_Data):
        def describe(self):
            return {**super().describe(), "test_note": "The test set is fracture-enriched."}

    shown = data_statement(_Enriched("/data/synth")).data
    assert shown.count("The test set is fracture-enriched.") == 1
