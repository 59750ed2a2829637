"""The adapter conformance suite, in the spirit of scikit-learn's ``check_estimator``.

Every adapter (plain PyTorch, Keras, Lightning, Hugging Face) gets a *harness*: a small, seeded, CPU training run
of a model with dropout and batch norm, with or without the recorder, that can stop with an exception after a given
epoch. :data:`CHECKS` are the properties every recorder must have (DESIGN.md, "Invariants"); ``test_conformance.py``
runs each check on each harness.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


class Crash(Exception):
    """Raised by a harness's training code after ``crash_after`` epochs (the user's code failing)."""


@dataclass
class Outcome:
    """What one harness run leaves behind."""

    params: dict[str, np.ndarray]
    rng: list[bytes]
    run: Any = None                # the recorder's Run (None without recorder)
    store: Any = None              # path of the store
    probe_indices: Any = None
    modes_restored: bool = True    # every module's train/eval flag as the user left it
    extra: dict[str, Any] = field(default_factory=dict)


def _rng_state() -> list[bytes]:
    import random

    import torch

    return [torch.random.get_rng_state().numpy().tobytes(), np.random.get_state()[1].tobytes(),
            repr(random.getstate()).encode()]


def _digits(n_train: int = 400, n_val: int = 200):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    p = np.random.default_rng(0).permutation(len(y))
    X, y = (X[p] / 16.0).astype("float32"), y[p].astype("int64")
    return X[:n_train], y[:n_train], X[n_train:n_train + n_val], y[n_train:n_train + n_val]


def _torch_params(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ harnesses
def torch_harness(record: bool, store: Any, crash_after: int | None = None, epochs: int = 3) -> Outcome:
    import torch
    from torch import nn

    from losslens.torch import LossLens

    Xtr, ytr, Xva, yva = (torch.tensor(a) for a in _digits())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run="conf",
                    store=store, probe_size=250) if record else None
    try:
        for e in range(epochs):
            if crash_after is not None and e == crash_after:
                raise Crash(e)
            model.train()
            for i in range(0, len(ytr), 50):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(Xtr[i:i + 50]), ytr[i:i + 50])
                loss.backward()
                opt.step()
                if lens:
                    lens.step(loss, batch_size=50)
            if lens:
                lens.end_epoch()
        if lens:
            lens.finish()
    except Crash:
        pass
    return Outcome(_torch_params(model), _rng_state(), lens.run if lens else None, store,
                   lens.probe_indices if lens else None, modes_restored=model.training)


def keras_harness(record: bool, store: Any, crash_after: int | None = None, epochs: int = 3) -> Outcome:
    import keras

    from losslens.keras import LossLens

    Xtr, ytr, Xva, yva = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dropout(0.3), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cbs: list = []
    lens = LossLens(run="conf", store=store, probe_size=250) if record else None
    if lens:
        cbs.append(lens)
    if crash_after is not None:
        class Stop(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == crash_after:
                    raise Crash(epoch)
        cbs.append(Stop())
    try:
        model.fit(Xtr, ytr, batch_size=50, epochs=epochs, validation_data=(Xva, yva), shuffle=False, callbacks=cbs,
                  verbose=0)
    except Crash:
        pass
    # by position: layer names get numbered suffixes when a process builds the same model twice
    params = {f"{i}": np.array(keras.ops.convert_to_numpy(v)) for i, v in enumerate(model.variables)}
    return Outcome(params, _rng_state(), lens.run if lens else None, store, lens.probe_indices if lens else None)


def lightning_harness(record: bool, store: Any, crash_after: int | None = None, epochs: int = 3) -> Outcome:
    import lightning.pytorch as L
    import torch
    from torch import nn

    from losslens.lightning import LossLens

    Xtr, ytr, Xva, yva = (torch.tensor(a) for a in _digits())

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
                                     nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def on_train_epoch_start(self):
            if crash_after is not None and self.current_epoch == crash_after:
                raise Crash(self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    L.seed_everything(0)
    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=50)
    lens = LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run="conf", store=store,
                    probe_size=250) if record else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[lens] if lens else [])
        try:
            trainer.fit(module, loader)
        except Crash:
            pass
    return Outcome(_torch_params(module), _rng_state(), lens.run if lens else None, store,
                   lens.lens.probe_indices if lens and lens.lens else None)


def transformers_harness(record: bool, store: Any, crash_after: int | None = None, epochs: int = 3) -> Outcome:
    import tempfile

    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from losslens.transformers import LossLens

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n: int, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(3, 30, (n, 12), generator=g)
            self.labels = ((self.ids == 7).sum(1) > (self.ids == 8).sum(1)).long()

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                    "labels": self.labels[i]}

    class Stop(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kw):
            if crash_after is not None and state.epoch is not None and round(state.epoch) == crash_after:
                raise Crash(state.epoch)

    train_ds, val_ds = Tokens(320, 1), Tokens(128, 2)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.2)
    model = BertForSequenceClassification(cfg)
    lens = LossLens(train_data=train_ds, val_data=val_ds, run="conf", store=store, probe_size=250) if record else None
    cbs = ([lens] if lens else []) + ([Stop()] if crash_after is not None else [])
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=16,
                                 per_device_eval_batch_size=64, learning_rate=1e-3, logging_steps=5,
                                 eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True,
                                 disable_tqdm=True, seed=0, dataloader_num_workers=0)
        try:
            Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, callbacks=cbs).train()
        except Crash:
            pass
    return Outcome(_torch_params(model), _rng_state(), lens.run if lens else None, store,
                   lens.lens.probe_indices if lens and lens.lens else None)


def fastai_harness(record: bool, store: Any, crash_after: int | None = None, epochs: int = 3) -> Outcome:
    import torch
    from fastai.basics import SGD, CrossEntropyLossFlat, DataLoaders, Learner, set_seed
    from fastai.callback.core import Callback
    from torch import nn

    from losslens.fastai import LossLens

    Xtr, ytr, Xva, yva = (torch.tensor(a) for a in _digits())
    set_seed(0)
    dls = DataLoaders.from_dsets(torch.utils.data.TensorDataset(Xtr, ytr), torch.utils.data.TensorDataset(Xva, yva),
                                 bs=50, device="cpu")
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    lens = LossLens(run="conf", store=store, probe_size=250) if record else None

    class Stop(Callback):
        def before_epoch(self):
            if crash_after is not None and self.learn.epoch == crash_after:
                raise Crash(self.learn.epoch)

    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=SGD, lr=0.1,
                    cbs=([lens] if lens else []) + [Stop()])
    try:
        with learn.no_logging():
            learn.fit(epochs)
    except Crash:
        pass
    return Outcome(_torch_params(model), _rng_state(), lens.lens.run if lens and lens.lens else None, store,
                   lens.lens.probe_indices if lens and lens.lens else None, modes_restored=model.training)


HARNESSES: dict[str, tuple[str, Callable[..., Outcome]]] = {
    # name: (module that must be importable, harness)
    "torch": ("torch", torch_harness),
    "keras": ("keras", keras_harness),
    "lightning": ("lightning", lightning_harness),
    "transformers": ("transformers", transformers_harness),
    "fastai": ("fastai", fastai_harness),
}


# ------------------------------------------------------------------------------------------------ the checks
def check_training_unchanged(off: Outcome, on: Outcome) -> None:
    """Recording never changes training: parameters and buffers bit-identical, global RNGs in the same state."""
    assert off.params.keys() == on.params.keys()
    for k in off.params:
        np.testing.assert_array_equal(off.params[k], on.params[k], err_msg=k)
    assert off.rng == on.rng, "the recorder left a global RNG in another state"
    assert on.modes_restored == off.modes_restored


def check_decomposition_identity(on: Outcome) -> None:
    """Every epoch: the terms sum to reported − validation, and C, V and T are the means of their per-sample
    losses (loss per sample)."""
    from losslens.diagnose import decompose

    run = on.run
    dec = decompose(run)
    assert len(dec) == len(run.epochs) >= 2
    for d, e in zip(dec, run.epochs):
        assert math.isclose(d.total, d.reported - d.validation, abs_tol=1e-9)
        for kind in ("eval_clean", "validation", "train_mode"):
            m = e.get(kind)
            assert m is not None and m.values is not None, kind
            assert math.isclose(m.mean, float(np.mean(m.values.astype(np.float64))), rel_tol=1e-6), kind
        assert math.isfinite(e.train_loss)


def check_per_sample_losses(on: Outcome) -> None:
    """The mean of the per-sample losses equals the framework's own loss on the same batch."""
    chk = on.run.meta.get("per_sample_loss_check")
    assert isinstance(chk, dict) and chk.get("consistent") is True, chk


def check_deterministic_probe(on: Outcome, again: Outcome) -> None:
    """The same seed gives the same probe set (the seeded permutation's sorted prefix, stratified by the class
    labels of every harness's in-memory training data) and the same numbers."""
    from losslens.recording import probe_permutation
    from losslens.recording.probe import class_strata

    n_train = on.run.meta["train_size"]
    n = on.run.meta["probe_size"]
    # tensor data is stratified by its 10 classes; a dataset whose labels are read only with the inputs is not
    strata = on.run.meta["probe_strata"]
    assert strata in (None, 10)
    codes = class_strata(_digits(n_train)[1]) if strata else None
    expect = np.sort(probe_permutation(on.run.meta["probe_seed"], n_train, codes)[:n])
    np.testing.assert_array_equal(on.probe_indices, expect)
    assert on.run.meta["probe_fingerprint"] == again.run.meta["probe_fingerprint"]
    for a, b in zip(on.run.epochs, again.run.epochs):
        for kind in ("eval_clean", "validation", "train_mode"):
            np.testing.assert_array_equal(a.get(kind).values, b.get(kind).values, err_msg=kind)


def check_crash_safety(crashed: Outcome, crash_after: int) -> None:
    """A run stopped by an exception leaves a readable store holding every epoch finished before it."""
    from losslens.store import Store

    with Store(crashed.store) as st:
        runs = st.list_runs()
        assert len(runs) == 1
        run = st.load_run(runs[0]["id"])
    assert [e.index for e in run.epochs] == list(range(crash_after))
    assert run.status == "running"
    for e in run.epochs:
        assert e.get("validation") is not None and e.get("eval_clean") is not None


CHECKS = ("training_unchanged", "decomposition_identity", "per_sample_losses", "deterministic_probe",
          "crash_safety")
