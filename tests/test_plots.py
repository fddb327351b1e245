"""Every figure has labelled axes, images are shown in the right orientation, PNGs are written."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vfnb import evaluate as ev  # noqa: E402
from vfnb import plots  # noqa: E402
from vfnb.errors import DatasetError, ParamsError  # noqa: E402


def plot_axes(fig):
    """Axes of a figure except colour bars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_labelled(fig):
    assert isinstance(fig, Figure)
    axes = plot_axes(fig)
    assert axes
    for ax in axes:
        assert ax.get_xlabel().strip(), f"axes {ax.get_title()!r} has no x label"
        assert ax.get_ylabel().strip(), f"axes {ax.get_title()!r} has no y label"
    # built outside pyplot: nothing accumulates, notebooks show each figure once
    assert plt.get_fignums() == []


def predictions(seed=0, n=120):
    rng = np.random.default_rng(seed)
    grade = rng.choice(4, size=n, p=[0.6, 0.2, 0.1, 0.1])
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), grade] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.DataFrame({"image_id": np.arange(n) // 6, "grade": grade, "pred": probs.argmax(1),
                         **{f"p{g}": probs[:, g] for g in range(4)}, "fracture_prob": 1 - probs[:, 0]})


@pytest.fixture(scope="module")
def umap_xy():
    """One real UMAP fit for the module (the first costs ~10 s of numba compilation)."""
    rng = np.random.default_rng(0)
    grades = np.repeat([0, 1, 2, 3], 15)
    centres = rng.normal(scale=5, size=(4, 16))
    embeddings = centres[grades] + rng.normal(size=(60, 16))
    return embeddings, grades, plots.umap_embedding(embeddings, seed=0, n_neighbors=10)


def test_save_figure_writes_png_atomically(tmp_path):
    fig = plots.plot_confusion([[5, 1, 0, 0], [2, 3, 0, 0], [0, 1, 4, 0], [0, 0, 0, 0]], title="test")
    path = plots.save_figure(fig, tmp_path / "figures" / "confusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]  # no temporary left behind
    with pytest.raises(ParamsError, match="png"):
        plots.save_figure(plots.plot_confusion(np.eye(4), title="t"), tmp_path / "x.jpg")


def test_plot_confusion_cells_give_the_count_and_the_row_share():
    cm = [[8, 2, 0, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 1, 1, 2]]
    fig = plots.plot_confusion(cm, title="SupCon, test split")
    assert_labelled(fig)
    (ax,) = plot_axes(fig)  # one matrix, not two side by side
    shares = np.asarray(ax.collections[0].get_array()).reshape(4, 4)
    assert shares[0] == pytest.approx([0.8, 0.2, 0, 0]) and shares[3] == pytest.approx([0, 0.25, 0.25, 0.5])
    cells = [t.get_text() for t in ax.texts]
    assert cells[:4] == ["8\n80 %", "2\n20 %", "0\n0 %", "0\n0 %"] and cells[15] == "2\n50 %"
    assert cells[8:12] == ["0\n–"] * 4  # grade 2 has no vertebra: no share to give
    assert min(t.get_fontsize() for t in ax.texts) >= 14  # readable at half the page's width
    assert "SupCon" in fig._suptitle.get_text()
    with pytest.raises(DatasetError):
        plots.plot_confusion(np.ones((3, 4)))


def legend_texts(fig) -> list[str]:
    """The texts of a figure's one legend, below the axes (figure legend) or on them."""
    legend = fig.legends[0] if fig.legends else plot_axes(fig)[0].get_legend()
    return [t.get_text() for t in legend.get_texts()]


def test_plot_roc_and_pr_several_models_with_auc_in_legend():
    a, b = predictions(1), predictions(2)
    one_class = a.assign(grade=0)
    fig = plots.plot_roc({"SupCon": a, "CE": (b["grade"], b["fracture_prob"]), "empty": one_class},
                         title="ROC, test split", thresholds={"SupCon": 0.5})
    assert_labelled(fig)
    legend = legend_texts(fig)
    auc = ev.screening_metrics(a["grade"], a["fracture_prob"], 0.5)["roc_auc"]
    assert f"SupCon (AUC {auc:.3f})" in legend
    assert any(t.startswith("CE (AUC") for t in legend)
    assert any("operating point" in t for t in legend)
    fig = plots.plot_pr({"SupCon": a, "CE": b}, title="PR, test split")
    assert_labelled(fig)
    legend = legend_texts(fig)
    assert any(t.startswith("SupCon (AP") for t in legend)


def test_plot_reliability_single_and_several():
    df = predictions(3)
    cal = ev.calibration(df[["p0", "p1", "p2", "p3"]].to_numpy(), df["grade"])
    assert_labelled(plots.plot_reliability(cal, title="SupCon, test"))
    result = ev.evaluate_predictions(df, 0.5, n_boot=20)
    fig = plots.plot_reliability({"SupCon": result["binary_calibration"], "CE": result["binary_calibration"]},
                                 title="fracture probability, test")
    assert_labelled(fig)
    assert "fractured" in plot_axes(fig)[0].get_ylabel()


def test_plot_curves_from_history_with_gaps():
    history = [{"epoch": e, "loss": 5.0 / e, "supcon_loss": 4.0 / e, "lr": 0.005 if e < 8 else 0.0005,
                **({"val_macro_f1": 0.1 * e} if e % 2 == 0 else {})} for e in range(1, 11)]
    fig = plots.plot_curves(history, title="SupCon training")
    assert_labelled(fig)
    axes = plot_axes(fig)
    assert len(axes) == 3  # loss, metrics, learning rate
    metric_line = [line for line in axes[1].get_lines() if line.get_label() == "validation macro-F1"][0]
    assert list(metric_line.get_xdata()) == [2, 4, 6, 8, 10]  # missing epochs skipped, not zeros
    assert all(float(t).is_integer() for t in axes[1].get_xticks())  # epochs are whole numbers
    assert not any("val_" in line.get_label() for ax in axes for line in ax.get_lines())  # no code names
    assert axes[2].get_yscale() == "log"
    assert not any(line.get_label() == "no structure" for line in axes[0].get_lines())
    fig = plots.plot_curves(history, loss_reference=("no structure", 3.135))
    reference = [line for line in plot_axes(fig)[0].get_lines() if line.get_label() == "no structure"]
    assert len(reference) == 1 and list(reference[0].get_ydata()) == [3.135, 3.135]
    with pytest.raises(DatasetError):
        plots.plot_curves([])


def test_plot_curves_marks_the_selected_epoch_and_draws_the_start():
    history = [{"epoch": e, "loss": 1.0 / e, "val_macro_f1": 0.30 - 0.05 * e} for e in (1, 2)]
    fig = plots.plot_curves(history, keys=["loss", "val_macro_f1"], selected_epoch=0, start={"val_macro_f1": 0.4},
                            title="Fine-tuning")
    loss_ax, metric_ax = plot_axes(fig)
    f1 = [line for line in metric_ax.get_lines() if line.get_label() == "validation macro-F1"][0]
    assert list(f1.get_xdata()) == [0, 1, 2] and f1.get_ydata()[0] == pytest.approx(0.4)
    loss = [line for line in loss_ax.get_lines() if line.get_label() == "training loss"][0]
    assert list(loss.get_xdata()) == [1, 2]  # no loss before the first step
    for ax in (loss_ax, metric_ax):
        marks = [line for line in ax.get_lines() if line.get_label() == "selected checkpoint (epoch 0)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [0, 0]


def test_identical_models_stay_visible_on_roc_and_reliability():
    a = predictions(1)
    fig = plots.plot_roc({"SupCon linear": a, "SupCon fine-tuned": a.copy(), "CE": predictions(2)}, title="ROC, test")
    ax = plot_axes(fig)[0]
    legend = legend_texts(fig)
    assert any(t.startswith("SupCon fine-tuned (identical to SupCon linear)") for t in legend)
    curves = [line for line in ax.get_lines() if line.get_label().startswith("SupCon")]
    assert len({line.get_linestyle() for line in curves}) == 2  # the same curve drawn in two styles
    result = ev.evaluate_predictions(a, 0.5, n_boot=20)
    fig = plots.plot_reliability({"A": result["binary_calibration"], "B": result["binary_calibration"]},
                                 title="fracture probability, test")
    lines = [line for line in plot_axes(fig)[0].get_lines() if line.get_label()[:1] in "AB"]
    assert lines[1].get_label().startswith("B (identical to A)")
    assert (lines[0].get_linestyle(), lines[0].get_marker()) != (lines[1].get_linestyle(), lines[1].get_marker())


def test_umap_embedding_shape_and_determinism(umap_xy):
    embeddings, grades, xy = umap_xy
    assert xy.shape == (60, 2) and np.all(np.isfinite(xy))
    again = plots.umap_embedding(embeddings, seed=0, n_neighbors=10)
    np.testing.assert_allclose(again, xy, atol=1e-5)
    # well separated clusters stay separated: nearest neighbour in 2-D has the same grade
    distance = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    assert (grades[distance.argmin(1)] == grades).mean() > 0.9


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_umap_embedding_tiny_inputs(n):
    xy = plots.umap_embedding(np.random.default_rng(n).normal(size=(n, 8)), seed=0)
    assert xy.shape == (n, 2) and np.all(np.isfinite(xy))


def test_plot_umap_by_grade_and_by_level(umap_xy):
    _, grades, xy = umap_xy
    fig = plots.plot_umap(xy, grades, highlight_grade=1, title="SupCon, validation")
    assert_labelled(fig)
    ax = plot_axes(fig)[0]
    # the highlighted grade is drawn last, on top
    assert ax.collections[-1].get_label().startswith("grade 1")
    levels = np.array(["L1", "T12", "T13", "L2"])[np.arange(60) % 4]
    fig = plots.plot_umap_by(xy, levels, "level")
    assert_labelled(fig)
    legend = [t.get_text() for t in plot_axes(fig)[0].get_legend().get_texts()]
    assert [t.split()[0] for t in legend] == ["T12", "T13", "L1", "L2"]  # cranio-caudal
    with pytest.raises(DatasetError):
        plots.plot_umap(xy, grades[:10])


def _patch_with_marker(shape=(8, 10, 12)):
    x = np.zeros((3,) + shape, dtype=np.float32)
    x[2, 2:6, 2:8, 2:10] = 20 / 28  # the vertebra mask (L1)
    x[1, 4, 9, 11] = 1.0  # a bright voxel at the anterior (high axis 1), superior (high axis 2) corner
    return x


def test_patch_gallery_shows_superior_up_and_anterior_right():
    x = _patch_with_marker()
    hu = np.full(x.shape[1:], -1000, dtype=np.int16)
    hu[4, 9, 11] = 1000
    fig = plots.plot_patch_gallery([x, (x, x[2] > 0), (hu, x[2] > 0)], titles=["a", "b", "c"], channel=1,
                                   title="grade 1, test")
    assert_labelled(fig)
    for ax in plot_axes(fig):
        image = ax.images[0]
        shown = np.asarray(image.get_array())
        assert image.origin == "lower"  # row 0 at the bottom: superior up
        assert shown.shape == (12, 10)  # rows: axis 2 (I -> S), columns: axis 1 (P -> A)
        assert np.unravel_index(np.argmax(shown), shown.shape) == (11, 9)
    with pytest.raises(DatasetError):
        plots.plot_patch_gallery([x], titles=["a", "b"])


def test_plot_input_channels():
    fig = plots.plot_input_channels(_patch_with_marker(), title="L1, grade 0")
    assert_labelled(fig)
    assert len(plot_axes(fig)) == 6
    with pytest.raises(DatasetError):
        plots.plot_input_channels(np.zeros((2, 4, 4, 4)))


def _ras_scan():
    nx, ny, nz = 20, 24, 16
    ct = np.full((nx, ny, nz), -100, dtype=np.int16)
    seg = np.zeros((nx, ny, nz), dtype=np.uint8)
    for i, label in enumerate((21, 20, 19)):  # L2, L1, T12 from the bottom up
        seg[7:12, 8:16, 1 + 5 * i: 5 + 5 * i] = label  # median x index 9
    ct[seg > 0] = 300
    ct[9, 22, 14] = 1500  # marker in the sagittal plane x = 9: anterior, superior
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-10, 20, 100]
    return ct, seg, affine


def test_plot_scan_views_is_orientation_independent_with_true_proportions():
    ct, seg, affine = _ras_scan()
    nx, ny, nz = ct.shape
    # the same scan stored LPS and slice-first: flip x and y, then put z first
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    other_ct = ct[::-1, ::-1, :].transpose(2, 0, 1)
    other_seg = seg[::-1, ::-1, :].transpose(2, 0, 1)
    other_affine = affine @ flip @ permute
    ras = plots.plot_scan_views(ct, seg, affine, title="case 1 (RAS)")
    other = plots.plot_scan_views(other_ct, other_seg, other_affine, title="case 1 (LPS, z first)")
    for fig in (ras, other):
        assert_labelled(fig)
    for ax_a, ax_b in zip(plot_axes(ras), plot_axes(other)):
        np.testing.assert_array_equal(np.asarray(ax_a.images[0].get_array()), np.asarray(ax_b.images[0].get_array()))
        assert ax_a.images[0].get_extent() == pytest.approx(ax_b.images[0].get_extent())
    sagittal, coronal = plot_axes(ras)
    assert sagittal.images[0].get_extent() == pytest.approx((0, ny * 0.7, 0, nz * 3.0))  # mm
    assert coronal.images[0].get_extent() == pytest.approx((0, nx * 0.8, 0, nz * 3.0))
    shown = np.asarray(sagittal.images[0].get_array())
    assert np.unravel_index(np.argmax(shown), shown.shape) == (14, 22)  # superior row, anterior column
    assert {t.get_text() for t in sagittal.texts} == {"T12", "L1", "L2"}


def test_plot_recall_by_and_count_heatmap():
    df = predictions(4).assign(level=lambda d: np.array(["T12", "L1", "L2"])[d.index % 3])
    fig = plots.plot_recall_by(ev.recall_by(df, "level", 0.5), "level", title="fracture recall by level, test")
    assert_labelled(fig)
    fig = plots.plot_count_heatmap(pd.crosstab(df["grade"], df["level"]), title="grade x level, all data",
                                   xlabel="Vertebra level", ylabel="Genant grade")
    assert_labelled(fig)


def test_figures_read_at_a_glance():
    """Legends outside the data, counts beside row shares, saliency with one colour bar, notes and words."""
    from vfnb.plots.saliency import map_note, panel_title, plot_saliency_gallery

    rng = np.random.default_rng(0)
    grades = rng.integers(0, 4, 80)
    scores = np.clip(grades / 3 + rng.normal(0, 0.3, 80), 0, 1)
    for fig in (plots.plot_roc({"a": (grades, scores), "b": (grades, scores ** 2)}, thresholds={"a": 0.5}),
                plots.plot_pr({"a": (grades, scores), "b": (grades, scores ** 2)})):
        assert fig.axes[0].get_legend() is None and len(fig.legends) == 1  # below the axes, not over the curves
        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # the constrained layout places the legend when the figure is drawn
        renderer = canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        axes = fig.axes[0].get_window_extent(renderer)
        assert legend.y1 <= axes.y0 and not legend.overlaps(axes)  # drawn: the legend box lies outside the axes
    confusion = plots.plot_confusion(np.array([[9, 1, 0, 0], [2, 3, 0, 0], [0, 1, 4, 0], [0, 0, 1, 2]]))
    cells = {t.get_text() for t in confusion.axes[0].texts}  # each count with its share of the row
    assert "9\n90 %" in cells and "3\n60 %" in cells

    cube = rng.random((3, 16, 16, 16))
    cube[2] = 0
    cube[2][4:12, 4:12, 4:12] = 1
    even = {"endplates": {"share": 0.2, "volume": 0.19}, "background": {"share": 0.8, "volume": 0.81}}
    focused = {"endplates": {"share": 0.6, "volume": 0.19}, "background": {"share": 0.4, "volume": 0.81}}
    items = [{"name": "synth-s0-0013_20_1.nii.gz", "grade": 1, "pred": 0, "input": cube, "gradcam": heat,
              "shares": shares} for heat, shares in ((np.zeros((16,) * 3), {}), (rng.random((16,) * 3), even),
                                                      (rng.random((16,) * 3), focused))]
    assert map_note(items[0]).startswith("empty map") and map_note(items[1]).startswith("evenly spread")
    assert map_note(items[2]) == ""
    assert panel_title(items[0]) == "L1 of synth-s0-0013\ngrade 1, predicted 0 (wrong)"
    gallery = plot_saliency_gallery(items, "Grad-CAM")
    assert len(gallery.axes) == 4  # three panels and one colour bar for all
    titles = [ax.get_title() for ax in gallery.axes[:3]]
    assert titles[0].endswith("\nempty map (no positive evidence anywhere)") and "evenly spread" in titles[1]
    assert titles[2].count("\n") == 1  # nothing to say of a focused map


def test_saliency_panels_share_one_colour_scale_and_flat_maps_say_so():
    from vfnb.plots.saliency import plot_saliency_gallery

    rng = np.random.default_rng(1)
    cube = rng.random((3, 16, 16, 16))
    cube[2] = 0
    cube[2][4:12, 4:12, 4:12] = 1
    strong = rng.random((16,) * 3) * 2.0           # unscaled Grad-CAM values of one model
    weak = 0.4 + rng.random((16,) * 3) * 0.05        # spans 0.05 of a scale reaching 2: flat
    items = [{"name": f"synth-s0-0001_{label}_0.nii.gz", "grade": 0, "pred": 0, "input": cube,
              "gradcam": (raw - raw.min()) / (raw.max() - raw.min()), "gradcam_raw": raw}
             for label, raw in ((18, strong), (19, weak))]
    fig = plot_saliency_gallery(items, "Grad-CAM of the predicted grade")
    colourbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colourbars) == 1 and colourbars[0].get_ylim()[1] == pytest.approx(strong.max())
    panels = [ax for ax in fig.axes if ax not in colourbars]
    heat_layers = [ax.images[1] for ax in panels]
    assert all(layer.get_clim() == (0, pytest.approx(strong.max())) for layer in heat_layers)  # one scale
    # the weak map is shown at its own unscaled values, dim, not stretched to the full range
    assert np.asarray(heat_layers[1].get_array()).max() < 0.25 * strong.max()
    assert "flat map" in panels[1].get_title() and "flat map" not in panels[0].get_title()
    assert "one scale\nfor every panel" in colourbars[0].get_ylabel()
    assert not any(".nii" in ax.get_title() for ax in panels)  # the vertebra in words, not its file name
