"""Every kind of vfnb page read in headless Chromium: no console error, broken image or link, warning box,
machine path, missing title or content running off the page (tests/browser_pages.py says what is checked).

Needs Debian's ``chromium`` and Playwright (both installed by ``make test``'s CI route); without them
the module is skipped with a note saying so.
"""

import copy
import re
from pathlib import Path

import pytest
import torch

from browser_pages import MACHINE_PATH, chromium, page_problems
from test_predict import synthetic_scan
from vfnb.cli import main
from vfnb.io import save_nifti
from vfnb.models.checkpoints import save_checkpoint
from vfnb.models.networks import ModelInput, build_model
from vfnb.study.registry import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
COMMITTED_PAGES = sorted(p for p in RESULTS.rglob("*.html") if "runs" not in p.relative_to(RESULTS).parts)

if chromium() is None:
    pytest.skip("no Chromium or no Playwright on this machine: the pages were not read in a browser "
                "(apt-get install chromium; pip install playwright)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        running = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield running
        running.close()


@pytest.mark.parametrize("page", COMMITTED_PAGES, ids=[str(p.relative_to(RESULTS)) for p in COMMITTED_PAGES])
def test_committed_report_pages_read_cleanly(browser, page):
    assert page_problems(browser, page) == []


def test_no_committed_result_file_names_a_folder_of_the_machine_that_made_it():
    for path in RESULTS.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".yaml", ".csv", ".log", ".ipynb", ".html"):
            text = path.read_text(errors="replace")
            found = MACHINE_PATH.search(re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", text))
            assert found is None, f"{path}: {text[max(0, found.start() - 40):found.end() + 40]!r}"


@pytest.mark.slow
def test_smoke_study_pages_read_cleanly(browser, smoke_study):
    """The pages of a fresh run (the session's smoke study, shared with test_study), not only the committed ones."""
    pages = sorted(smoke_study.glob("*.html"))
    assert {p.name for p in pages} == {"index.html", *(f"{n}.html" for n in NOTEBOOKS)}
    for page in pages:
        problems = [p for p in page_problems(browser, page) if "machine path" not in p]  # the test's own folders
        assert problems == [], page.name


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    ct, seg, affine = synthetic_scan()
    for sub in ("img", "seg"):
        (root / sub).mkdir()
    for name in ("first", "second"):
        save_nifti(root / "img" / f"{name}.nii.gz", ct, affine)
        save_nifti(root / "seg" / f"{name}.nii.gz", seg, affine)
    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 16])
    net.input_spec = ModelInput(cube_size=32, patch_size=32)
    checkpoint = save_checkpoint(root / "model.pt", copy.deepcopy(net), params={"cube_size": 32, "mode": "ce"},
                                 training_data={"dataset": "synthspine-test", "synthetic": True, "vertebrae": 40,
                                                "grade_counts": {"0": 30, "1": 4, "2": 3, "3": 3}})
    return root, checkpoint


@pytest.mark.parametrize("grader", ["network", "heights"])
def test_per_scan_reports_read_cleanly(browser, scans, tmp_path, grader):
    root, checkpoint = scans
    model = ["--checkpoint", str(checkpoint)] if grader == "network" else []
    assert main(["predict", "--ct", str(root / "img"), "--seg", str(root / "seg"), "--out", str(tmp_path / "g.csv"),
                 "--report", str(tmp_path / "reports"), "--device", "cpu", *model]) == 0
    pages = sorted((tmp_path / "reports").glob("*.html"))
    assert [p.name for p in pages] == ["first.html", "index.html", "second.html"]
    for page in pages:
        problems = [p for p in page_problems(browser, page) if "machine path" not in p]  # the test's own folders
        assert problems == [], page.name
