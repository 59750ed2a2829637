"""Hugging Face Trainer callback: a tiny randomly initialised BERT (config in the test, no download), CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from losslens.diagnose import decompose  # noqa: E402
from losslens.recording.probe import probe_permutation  # noqa: E402
from losslens.store import Store  # noqa: E402
from losslens.transformers import LossLens  # noqa: E402

COMMON = textwrap.dedent(
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        \"\"\"Sequences of 12 random tokens; label 1 when token 7 occurs more often than token 8.\"\"\"
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(3, 30, (n, 12), generator=g)
            self.labels = ((self.ids == 7).sum(1) > (self.ids == 8).sum(1)).long()

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                    "labels": self.labels[i]}

    def tiny_bert():
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32, num_labels=2)
        return BertForSequenceClassification(cfg)

    def args(out, **kw):
        kw = {"num_train_epochs": 3, "per_device_train_batch_size": 16, "save_strategy": "no", "learning_rate": 1e-3,
              **kw}
        return TrainingArguments(output_dir=out, per_device_eval_batch_size=64, logging_steps=5,
                                 eval_strategy="epoch", report_to=[], use_cpu=True,
                                 disable_tqdm=True, seed=0, dataloader_num_workers=0, **kw)
    """
)
_ns: dict = {}
exec(COMMON, _ns)  # the same definitions the torchrun script runs  # noqa: S102
Tokens, tiny_bert, args, Trainer = _ns["Tokens"], _ns["tiny_bert"], _ns["args"], _ns["Trainer"]


def train(tmp, with_lens):
    train_ds, val_ds = Tokens(320, 1), Tokens(128, 2)
    model = tiny_bert()
    cbs = ([LossLens(train_data=train_ds, val_data=val_ds, run="bert", store=tmp / "runs.db", probe_size=160)]
           if with_lens else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args(str(tmp / "out")), train_dataset=train_ds,
                          eval_dataset=val_ds, callbacks=cbs)
        trainer.train()
    return model, (cbs[0] if cbs else None), trainer


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    off, _, _ = train(tmp, False)
    on, lens, trainer = train(tmp, True)
    return off, on, lens, trainer, tmp


def test_weights_bit_identical_with_and_without_callback(hf_runs):
    off, on, *_ = hf_runs
    for (k, a), (_, b) in zip(off.state_dict().items(), on.state_dict().items()):
        assert torch.equal(a, b), k


def test_windows_at_their_real_positions_and_probes_at_each_evaluation(hf_runs):
    _, on, lens, trainer, tmp = hf_runs
    with Store(tmp / "runs.db") as store:
        run = store.load_run(lens.run.id)
    assert run.status == "finished" and run.meta["framework"] == "transformers"
    assert [e.index for e in run.epochs] == [0, 1, 2]
    assert [e.position for e in run.epochs] == pytest.approx([1.0, 2.0, 3.0])
    # 320 samples / 16 = 20 steps per epoch, windows of 5 steps: 4 windows per epoch, centres at 2.5, 7.5, ... steps
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    np.testing.assert_allclose(run.steps.loss, logged, rtol=1e-6)
    np.testing.assert_array_equal(run.steps.span, 5)
    np.testing.assert_allclose(run.steps.position, (np.arange(12) * 5 + 2.5) / 20, rtol=1e-6)
    np.testing.assert_array_equal(run.steps.batch_size, 80)
    for e in run.epochs:
        assert set(e.measurements) == {"train_mode", "eval_clean", "validation"}
        assert e.train_loss == pytest.approx(np.mean(run.steps.for_epoch(e.index).loss), rel=1e-9)
        assert "eval_loss" in e.metrics
        d = decompose(run)[e.index]
        assert d.total == pytest.approx(d.reported - d.validation, abs=1e-12)
    # the last evaluation's V equals the Trainer's own eval loss, C an independent computation
    assert run.epochs[-1].get("validation").mean == pytest.approx(run.epochs[-1].metrics["eval_loss"], rel=1e-5)
    train_ds = Tokens(320, 1)
    idx = np.sort(probe_permutation(0, 320)[:160])
    on.eval()
    with torch.no_grad():
        logits = on(input_ids=train_ds.ids[idx], attention_mask=torch.ones(160, 12, dtype=torch.long)).logits
        c = torch.nn.functional.cross_entropy(logits, train_ds.labels[idx], reduction="none").numpy()
    np.testing.assert_allclose(run.epochs[-1].get("eval_clean").values, c, rtol=1e-5, atol=1e-6)


def test_a_model_without_a_known_head_needs_a_loss_fn(tmp_path):
    from transformers import BertConfig, BertModel, TrainerControl, TrainerState

    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=1)
    lens = LossLens(train_data=Tokens(8, 0), store=None)
    with pytest.raises(ValueError, match="loss_fn: .*BertModel"):
        lens.on_train_begin(args(str(tmp_path)), TrainerState(), TrainerControl(), model=BertModel(cfg))
    assert lens.lens is None


@pytest.mark.parametrize("kw", ["model", "seed"])
def test_arguments_the_trainer_owns_are_refused_when_the_callback_is_made(kw):
    """The Trainer's model and ``args.seed`` are recorded; passing them to the callback is refused in one line
    when it is constructed, not by a TypeError inside ``on_train_begin`` that stops training."""
    with pytest.raises(TypeError, match=f"^{kw}: not an argument of LossLens"):
        LossLens(store=None, **{kw: 0})
    LossLens(store=None, probe_seed=3)      # the probe's own seed is the callback's to take


TORCHRUN_SCRIPT = COMMON + textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    from losslens.transformers import LossLens

    if __name__ == "__main__":
        warnings.filterwarnings("ignore")
        torch.set_num_threads(1)
        out = sys.argv[1]
        train_ds, val_ds = Tokens(320, 1), Tokens(128, 2)
        model = tiny_bert()
        lens = LossLens(train_data=train_ds, val_data=val_ds, run="bert-ddp", store=os.path.join(out, "runs.db"),
                        probe_size=160)
        trainer = Trainer(model=model, args=args(os.path.join(out, "o"), ddp_backend="gloo", num_train_epochs=2,
                                                 per_device_train_batch_size=8),
                          train_dataset=train_ds, eval_dataset=val_ds, callbacks=[lens])
        trainer.train()
        r = int(os.environ["RANK"])
        if r == 0:
            torch.save(model.state_dict(), os.path.join(out, "weights.pt"))
        last = lens.run.epochs[-1]
        np.savez(os.path.join(out, f"rank{r}.npz"), **{k: m.values for k, m in last.measurements.items()})
        with open(os.path.join(out, f"rank{r}.json"), "w") as f:
            json.dump({"run_id": lens.run.id, "world_size": lens.run.meta.get("world_size"),
                       "logged": [h["loss"] for h in trainer.state.log_history if "loss" in h]}, f)
        # a process group left to interpreter exit can abort in gloo's teardown ("terminate called without an
        # active exception", seen once under load): close it explicitly
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_one_process(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info0 = json.loads((tmp_path / "rank0.json").read_text())
    info1 = json.loads((tmp_path / "rank1.json").read_text())
    assert info0["world_size"] == 2 and info1["run_id"] is None
    with Store(tmp_path / "runs.db") as store:
        assert len(store.list_runs()) == 1
        run = store.load_run(info0["run_id"])
    assert run.status == "finished" and [e.index for e in run.epochs] == [0, 1]
    # 320 samples, 2 ranks x 8 per step: 20 steps per epoch, 4 windows of 5 steps of 80 samples each
    np.testing.assert_allclose(run.steps.loss, info0["logged"], rtol=1e-6)
    np.testing.assert_array_equal(run.steps.batch_size, 80)
    model = tiny_bert()
    model.load_state_dict(torch.load(tmp_path / "weights.pt"))
    model.eval()
    train_ds, val_ds = Tokens(320, 1), Tokens(128, 2)
    idx = np.sort(probe_permutation(0, 320)[:160])
    with torch.no_grad():
        c = torch.nn.functional.cross_entropy(
            model(input_ids=train_ds.ids[idx], attention_mask=torch.ones(160, 12, dtype=torch.long)).logits,
            train_ds.labels[idx], reduction="none").numpy()
        v = torch.nn.functional.cross_entropy(
            model(input_ids=val_ds.ids, attention_mask=torch.ones(128, 12, dtype=torch.long)).logits,
            val_ds.labels, reduction="none").numpy()
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    np.testing.assert_allclose(r0["eval_clean"], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r0["validation"], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run.epochs[-1].get("validation").values, v, rtol=1e-5, atol=1e-6)
    for k in ("eval_clean", "validation", "train_mode"):
        np.testing.assert_array_equal(r0[k], r1[k])
    # T of one process: batches of the per-device size 8 in probe order, the same per-batch dropout draws
    from losslens.torch import LossLens as TorchLossLens
    from losslens.transformers import logits_forward

    ref = TorchLossLens(model, torch.nn.CrossEntropyLoss(), train_data=train_ds, val_data=val_ds, store=None,
                        probe_size=160, forward=logits_forward, train_batch_size=8)
    for _ in range(2):
        model.train()
        ref.step(0.0)
        ep = ref.end_epoch()
    np.testing.assert_allclose(r0["train_mode"], ep.get("train_mode").values, rtol=1e-5, atol=1e-6)


def test_a_failing_probe_never_stops_the_trainer_on_a_language_model(tmp_path):
    """Issue 17: a tiny GPT-2 (from a config) with the callback's defaults. Whatever the probe passes do with a
    causal-LM head, the Trainer finishes every step and each evaluation is recorded (without measurements if
    they failed, with the error in the run)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    class Text(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(0, 64, (n, 16), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(16, dtype=torch.long),
                    "labels": self.ids[i]}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=1, n_head=2, n_embd=16, n_positions=32))
    train_ds, val_ds = Text(96, 1), Text(32, 2)
    cb = LossLens(run="gpt2-tiny", store=tmp_path / "s.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args(str(tmp_path / "out"), num_train_epochs=2), train_dataset=train_ds,
                          eval_dataset=val_ds, callbacks=[cb])
        trainer.train()
    assert trainer.state.global_step == 2 * 96 // 16
    with Store(tmp_path / "s.db") as s:
        run = s.load_run("gpt2-tiny")
    assert len(run.epochs) == 2
    for e in run.epochs:
        assert e.measurements or any(x["epoch"] == e.index for x in run.meta.get("measurement_errors", []))


def test_training_resumed_from_a_checkpoint_continues_the_stored_run(tmp_path):
    """The callback writes its state into each checkpoint folder; trainer.train(resume_from_checkpoint=...) with a
    new callback continues the same stored run from the checkpoint's evaluation."""
    train_ds, val_ds = Tokens(320, 1), Tokens(128, 2)
    store, out = tmp_path / "runs.db", str(tmp_path / "out")

    def go(resume=None):
        cb = LossLens(train_data=train_ds, val_data=val_ds, run="bert", store=store, probe_size=96)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(model=tiny_bert(), args=args(out, save_strategy="epoch"), train_dataset=train_ds,
                    eval_dataset=val_ds, callbacks=[cb]).train(resume_from_checkpoint=resume)
        return cb

    first = go()
    assert json.loads((tmp_path / "out" / "checkpoint-20" / "losslens_state.json").read_text()) == {
        "run_id": first.run.id, "epochs": 1}
    # transformers < 4.46 loads the RNG file with torch.load's default, which torch >= 2.6 refuses (numpy
    # globals): without it the Trainer warns and resumes; this test is about the record, not the RNG
    (tmp_path / "out" / "checkpoint-20" / "rng_state.pth").unlink(missing_ok=True)
    again = go(resume=str(tmp_path / "out" / "checkpoint-20"))    # from the end of the first epoch
    assert again.run.id == first.run.id
    with Store(store) as st:
        assert len(st.list_runs()) == 1
        run = st.load_run(first.run.id)
    assert [e.index for e in run.epochs] == [0, 1, 2] and run.status == "finished"
    assert run.epochs[0].train_loss == first.run.epochs[0].train_loss
    assert [e.position for e in run.epochs] == pytest.approx([1.0, 2.0, 3.0])
    assert len(run.steps) == len(first.run.steps)


def test_noise_aware_early_stopping_callback_stops_the_trainer(tmp_path):
    """With the recorder's per-sample validation losses, the stopper ends a run whose validation loss rises, and
    the Trainer stops before its last epoch."""
    from losslens.transformers import EarlyStoppingCallback

    train_ds, val_ds = Tokens(64, 1), Tokens(128, 2)           # a tiny training set: it overfits
    lens = LossLens(train_data=train_ds, val_data=val_ds, store=None, probe_size=0)
    stop = EarlyStoppingCallback(early_stopping_patience=5, lens=lens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=tiny_bert(), args=args(str(tmp_path / "o"), num_train_epochs=60,
                                                        learning_rate=5e-3), train_dataset=train_ds,
                          eval_dataset=val_ds, callbacks=[lens, stop])
        trainer.train()
    v = [e.get("validation").mean for e in lens.run.epochs]
    assert stop.decision.stop and len(v) < 60
    assert stop.decision.best_epoch == int(np.argmin(v))
    assert trainer.state.epoch < 60                              # the Trainer stopped early


def test_report_to_integrations_receive_the_decomposition_and_the_verdict(tmp_path):
    """Write-back (issue 15): after each evaluation the callback logs through the Trainer, so the TensorBoard
    integration (``report_to="tensorboard"``) writes the measurements, every term with its standard error and the
    verdict's index, and ``state.log_history`` keeps them; the values are the recorded run's."""
    pytest.importorskip("tbparse")
    from tbparse import SummaryReader

    from losslens.diagnose import VERDICT_CODES, diagnose
    from losslens.diagnose.gap import decompose_epoch

    train_ds, val_ds = Tokens(160, 1), Tokens(64, 2)
    lens = LossLens(train_data=train_ds, val_data=val_ds, run="bert", store=None, probe_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = args(str(tmp_path / "out"), num_train_epochs=2)
        a.report_to = ["tensorboard"]   # writes under output_dir/runs/
        trainer = Trainer(model=tiny_bert(), args=a, train_dataset=train_ds, eval_dataset=val_ds, callbacks=[lens])
        trainer.train()
    run = lens.run
    logged = [h for h in trainer.state.log_history if "gap_timing" in h]
    assert len(logged) == len(run.epochs) == 2
    scalars = SummaryReader(str(tmp_path / "out"), pivot=False).scalars
    for h, ep in zip(logged, run.epochs):
        d = decompose_epoch(ep)
        assert h["eval_train_loss"] == pytest.approx(ep.measurements["eval_clean"].mean, rel=1e-9)
        assert h["generalization_gap"] == pytest.approx(d.terms["generalization_gap"].value, rel=1e-9)
        assert h["gap_timing_se"] == pytest.approx(d.terms["timing"].se, rel=1e-9)
        at = scalars[(scalars.step == h["step"]) & scalars.tag.str.endswith("generalization_gap")]
        assert at["value"].iloc[0] == pytest.approx(d.terms["generalization_gap"].value, rel=1e-5)
    assert VERDICT_CODES[int(logged[-1]["verdict_code"])] == diagnose(run).verdict.code
    # trainer_state.json keeps them, and reading it back takes them for measurements, never for losses
    from losslens.importers import load_log

    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))
    back = load_log(tmp_path / "trainer_state.json")
    assert back.meta["roles"]["train_loss"] == "loss" and back.meta["roles"]["val_loss"] == "eval_loss"
    assert len(back.epochs) == 2


def test_an_integration_failing_on_the_logged_measurements_never_stops_training(tmp_path):
    """A ``report_to``-like callback that raises on losslens's values: one warning, the values go to
    ``state.log_history`` instead, and the Trainer trains every epoch."""
    from transformers import TrainerCallback

    class Exploding(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "gap_timing" in logs:
                raise ValueError("tracker rejected the metric")

    train_ds, val_ds = Tokens(96, 1), Tokens(32, 2)
    lens = LossLens(train_data=train_ds, val_data=val_ds, run="bert", store=None, probe_size=32)
    with pytest.warns(RuntimeWarning, match="tracker rejected the metric"):
        trainer = Trainer(model=tiny_bert(), args=args(str(tmp_path / "out"), num_train_epochs=2),
                          train_dataset=train_ds, eval_dataset=val_ds, callbacks=[lens, Exploding()])
        trainer.train()
    assert len(lens.run.epochs) == 2
    assert sum("gap_timing" in h for h in trainer.state.log_history) == 2
