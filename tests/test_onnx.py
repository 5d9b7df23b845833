"""ONNX graphs built with the onnx package itself: which convolutions are stored and which are skipped, and why."""
import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from filterdb.cli import main
from filterdb.sources.onnx_model import read_onnx
from filterdb.store import open_database


def test_stored_skipped_and_attributes(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 2, 1, 3)).astype(np.float32)  # grouped, 1x3
    wt = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [  # listed out of order: the reader sorts them topologically
        helper.make_node("Conv", ["y", "w2i"], ["z"], name="second", group=2, strides=[2, 1], pads=[0, 1, 0, 1]),
        helper.make_node("Identity", ["w2"], ["w2i"]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["y"], name="first", dilations=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Mul", ["w1", "two"], ["w_run"]),
        helper.make_node("Conv", ["x", "w_run"], ["r"], name="runtime"),
        helper.make_node("ConvTranspose", ["z", "wt"], ["t"], name="up"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (wt, "wt"),
                                                        (np.zeros(4, np.float32), "b1"),
                                                        (np.float32(2.0).reshape(()), "two"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("t", "r")], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    layers, facts = read_onnx(path)
    assert [la.info["name"] for la in layers] == ["first", "second"]
    assert np.array_equal(layers[0].filters(), w1.reshape(-1, 3, 3))
    assert np.array_equal(layers[1].filters(), w2.reshape(-1, 1, 3))
    first, second = layers[0].info, layers[1].info
    assert (first["padding"], first["dilation_h"], first["has_bias"]) == ("tf_same", 2, True)
    assert (second["groups"], second["in_channels"], second["stride_h"], second["stride_w"], second["padding"]) == \
        (2, 4, 2, 1, "0,1")
    skipped = {s["name"]: s["reason"] for s in json.loads(facts["skipped_convs"])}
    assert set(skipped) == {"runtime", "up"} and "computed at run time" in skipped["runtime"]
    assert facts["input_shape"] == (1, 9, 9)
    r = CliRunner().invoke(main, ["add", str(path), "--db", str(tmp_path / "db")])
    assert r.exit_code == 0, r.output
    assert "2 convolution module(s) not stored" in r.output
    with open_database(tmp_path / "db") as db:
        assert list(db.layers.sort_values("layer_index")["kernel"]) == ["3x3", "1x3"]


def test_nan_weight_is_refused(tmp_path):
    w = np.ones((2, 1, 3, 3), np.float32)
    w[0, 0, 1, 1] = np.nan
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph), str(tmp_path / "nan.onnx"))
    r = CliRunner().invoke(main, ["add", str(tmp_path / "nan.onnx"), "--db", str(tmp_path / "db")])
    assert r.exit_code == 1 and "layer c" in r.output and "NaN" in r.output
    assert not (tmp_path / "db").exists()
