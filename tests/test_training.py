"""fastbp.training (the shared epoch loop), fastbp.plot and fastbp.data's named data sets,
used without the CLI."""

import math

import numpy as np
import pytest

from fastbp import data, nn, plot, training


def test_fit_trains_and_reports_every_epoch():
    ds = data.load_dataset(data.DataSpec("spirals"), val_fraction=0.2)
    model = nn.MLP([ds.n_features, 32, ds.n_classes], rng=0)
    factory, lr = training.OPTIMIZERS["adam"]
    seen = []
    history = training.fit(model, ds, factory(1e-2), 5, 16, np.random.default_rng(0),
                           on_epoch=seen.append)
    assert seen == history and [s.epoch for s in history] == [1, 2, 3, 4, 5]
    assert history[-1].train_loss < history[0].train_loss
    assert all(math.isfinite(s.val_loss) for s in history)


def test_load_dataset_errors_name_the_spec(tmp_path):
    with pytest.raises(ValueError, match=r"^mnist:.*missing: .*not found"):
        data.load_dataset(data.DataSpec("mnist", str(tmp_path / "missing")))
    ds = data.load_dataset(data.DataSpec("digits"))
    assert "train /" in data.describe_split(ds) and ds.X_train.dtype == np.float32


def test_plot_curves_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    stats = [training.EpochStats(e, 1.0 / e, 0.5, 1.1 / e, 0.4, 0.1, 100.0) for e in (1, 2, 3)]
    path = tmp_path / "c.png"
    plot.plot_curves(stats, str(path), "t", test_acc=0.5)
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="no_such_dir"):
        plot.plot_curves(stats, str(tmp_path / "no_such_dir" / "c.png"), "t")
