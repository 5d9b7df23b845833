"""The notebook API: readable results (_repr_html_, .plot()) and metrics frames that carry the model columns."""
import pytest
import torch
from torch import nn

from filterdb.analysis import compare_groups, database_metrics
from filterdb.build import add_module
from filterdb.store import FilterDB


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("nb") / "db"
    with FilterDB.open(path, "a") as fdb:
        for i in range(3):
            for training in ("robust", "normal"):
                torch.manual_seed(i * 2 + (training == "robust"))
                net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
                if training == "robust":
                    with torch.no_grad():
                        net[0].weight[:2] = 0
                add_module(fdb, net, source="nb", name=f"{training}-{i}", input_shape=(1, 8, 8),
                               record={"training": training, "dataset": "digits", "architecture": "cnn",
                                       "pair": f"run{i}@init", "pair_role": training})
    return path


def test_metrics_frame_carries_the_model_columns(db):
    frame = database_metrics(db, select="robust")
    assert sorted(set(frame["model"])) == ["robust-0", "robust-1", "robust-2"]
    assert set(frame["training"]) == {"robust"} and set(frame["dataset"]) == {"digits"}
    assert set(frame["architecture"]) == {"cnn"} and sorted(set(frame["pair"])) == ["run0@init", "run1@init", "run2@init"]
    first = frame[frame["layer_index"] == 0]
    assert list(first["sparsity"]) == [0.5, 0.5, 0.5]  # grouped by a model column without a merge
    assert database_metrics(db).groupby("training")["sparsity"].max().to_dict() == {"normal": 0.0, "robust": 0.5}


def test_comparison_reads_in_a_notebook(db, tmp_path):
    result = compare_groups(db, "robust", "normal", "first", permutations=99)
    html = result._repr_html_()
    assert html.count("<table") == 3  # groups, statistics, divergence
    assert "A = robust, B = normal" in html and "sparsity" in html and "Wilcoxon" in html
    sparsity = result.tests.set_index("metric").loc["sparsity"]
    assert sparsity["difference"] == 0.5 and "0.5" in html
    assert "3 models" in repr(result) and "robust" in repr(result)
    assert set(result.per_model["training"]) == {"robust", "normal"}
    assert (result.per_model["training"] == result.per_model["group"]).all()
    assert set(result.per_model["pair"]) == {"run0@init", "run1@init", "run2@init"}
    fig = result.plot()
    assert len(fig.axes) == result.tests["metric"].nunique()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["robust", "normal"]
    out = tmp_path / "cmp.svg"
    assert result.plot(out) is not None and out.read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.svg"]


def test_plot_metrics_by_a_model_column(db, tmp_path):
    from filterdb.analysis import plot_metrics
    from filterdb.errors import FilterDBError

    frame = database_metrics(db)
    fig = plot_metrics(frame, ["sparsity", "l2_norm"])
    assert [ax.get_title() for ax in fig.axes] == ["sparsity", "l2_norm"]
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
    assert set(lines) == {"normal", "robust"}
    assert lines["robust"][0] == 0.5 and lines["normal"][0] == 0.0  # first layer: half the robust filters dead
    out = tmp_path / "metrics.png"
    plot_metrics(frame, by="pair", path=out)
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FilterDBError, match="no column 'colour'"):
        plot_metrics(frame, by="colour")
