"""Issue 17: language models and token classification with the Hugging Face ``Trainer``, tiny models built from
configs, trained on generated tokens. The recorded per-token means equal the models' own losses on the same
samples, the Trainer is never interrupted, and a head losslens does not know is refused before the first step."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from losslens.diagnose import diagnose  # noqa: E402
from losslens.record import Measurement, loss_unit  # noqa: E402
from losslens.transformers import LossLens, SequenceClassificationLoss, TokenCrossEntropy, default_loss  # noqa: E402

VOCAB = 48


class Varlen(torch.utils.data.Dataset):
    """Rows of 6 to 20 tokens with a learnable rule (each token is the previous plus one, mod VOCAB, with a
    random restart 20 % of the time); ``labels`` = ``input_ids`` or per-token tags (token % 5)."""

    def __init__(self, n: int, seed: int, tags: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            L = int(torch.randint(6, 21, (1,), generator=g))
            x = [int(torch.randint(2, VOCAB, (1,), generator=g))]
            for _ in range(L - 1):
                restart = float(torch.rand(1, generator=g)) < 0.2
                x.append(int(torch.randint(2, VOCAB, (1,), generator=g)) if restart else 2 + (x[-1] - 1) % (VOCAB - 2))
            self.rows.append(torch.tensor(x))
        self.tags = tags

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        x = self.rows[i]
        return {"input_ids": x, "labels": x % 5 if self.tags else x.clone()}


def pad(items: list[dict]) -> dict:
    """Right padding: input ids 0, attention mask 0, labels -100 (not counted)."""
    n = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros(len(items), n, dtype=torch.long)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    for k, it in enumerate(items):
        m = len(it["input_ids"])
        ids[k, :m], mask[k, :m], labels[k, :len(it["labels"])] = it["input_ids"], 1, it["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Seq2seq(torch.utils.data.Dataset):
    """Copy-and-shift task: the target is the source plus one (mod VOCAB)."""

    def __init__(self, n: int, seed: int) -> None:
        self.src = Varlen(n, seed)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict:
        x = self.src.rows[i]
        return {"input_ids": x, "labels": 2 + (x - 1) % (VOCAB - 2)}


def masked(items: list[dict]) -> dict:
    """Masked-LM collator: 15 % of the real tokens replaced by token 1 and counted; the others are -100."""
    b = pad(items)
    real = b["attention_mask"].bool()
    pick = (torch.rand(b["input_ids"].shape) < 0.15) & real
    pick[:, 0] |= real[:, 0] & ~pick.any(dim=1)   # at least one counted token per row
    labels = torch.where(pick, b["input_ids"], torch.full_like(b["input_ids"], -100))
    return {"input_ids": torch.where(pick, torch.ones_like(b["input_ids"]), b["input_ids"]),
            "attention_mask": b["attention_mask"], "labels": labels}


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


def t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=16, num_layers=1,
                                               num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                                               eos_token_id=1))


def bert(cls_name: str, **cfg):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, **cfg)
    return getattr(transformers, cls_name)(config)


def train(tmp, model, train_ds, val_ds, collate, epochs=2, **kw):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp / "out"), num_train_epochs=epochs, per_device_train_batch_size=8,
                             per_device_eval_batch_size=len(val_ds), learning_rate=3e-3, logging_steps=3,
                             eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, dataloader_num_workers=0, remove_unused_columns=False)
    cb = LossLens(run="lm", store=tmp / "s.db", probe_size=32, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=collate, callbacks=[cb])
        trainer.train()
    return trainer, cb


def model_loss(model, ds, indices, collate, batch=8):
    """The model's own loss over ``indices``, per counted token: Σ loss_b · tokens_b / Σ tokens_b, with
    ``tokens_b`` the labels the model counts in batch b (shifted for a causal LM)."""
    model.eval()
    shift = type(model).__name__.endswith("LMHeadModel")
    num = den = 0.0
    with torch.no_grad():
        for k in range(0, len(indices), batch):
            b = collate([ds[int(i)] for i in indices[k:k + batch]])
            lab = b["labels"][:, 1:] if shift else b["labels"]
            n = float((lab != -100).sum())
            num += float(model(**b).loss) * n
            den += n
    return num / den


def logged_losses(trainer, lo, hi):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and lo < h["epoch"] <= hi]


@pytest.mark.parametrize("make,data,collate", [
    (gpt2, lambda n, s: Varlen(n, s), pad),
    (t5, lambda n, s: Seq2seq(n, s), pad),
    (lambda: bert("BertForTokenClassification", num_labels=5), lambda n, s: Varlen(n, s, tags=True), pad),
], ids=["gpt2-causal", "t5-seq2seq", "bert-token-classification"])
def test_language_model_runs_record_the_models_own_per_token_losses(tmp_path, make, data, collate):
    train_ds, val_ds = data(96, 1), data(40, 2)
    model = make()
    trainer, cb = train(tmp_path, model, train_ds, val_ds, collate)
    run = cb.lens.run
    assert trainer.state.global_step == 2 * 96 // 8     # never interrupted
    assert [e.index for e in run.epochs] == [0, 1] and not run.meta.get("measurement_errors")
    last = run.epochs[-1]
    c, v = last.get("eval_clean"), last.get("validation")
    assert c is not None and v is not None and c.weights is not None and v.weights is not None
    # the recorded means are the model's own loss on the same samples, per counted token
    assert c.mean == pytest.approx(model_loss(model, train_ds, cb.lens.probe_indices, collate), rel=1e-5)
    assert v.mean == pytest.approx(model_loss(model, val_ds, np.arange(len(val_ds)), collate), rel=1e-5)
    # ... and the Trainer's eval_loss (one eval batch: a mean over all its tokens), up to the Trainer's own count of
    # tokens, which for a causal LM may include each row's first label (trainer_token_scale)
    scale = run.meta.get("reported_loss_token_scale", 1.0)
    lab = collate([val_ds[i] for i in range(len(val_ds))])["labels"]
    eval_scale = float((lab[:, 1:] != -100).sum()) / float((lab != -100).sum())
    assert any(math.isclose(last.metrics["eval_loss"], v.mean * s, rel_tol=1e-5) for s in (1.0, eval_scale))
    # R is the sample-weighted mean of the Trainer's logged windows, on the model's scale
    for e, lo in zip(run.epochs, (0.0, 1.0)):
        logged = logged_losses(trainer, lo, lo + 1.0)
        assert e.train_loss == pytest.approx(np.mean(logged) / scale, rel=1e-6)
    assert run.meta["head"] in ("causal_lm", "seq2seq_lm", "token_classification")
    assert loss_unit(run) == "loss per token"
    dec = diagnose(run).get("gap.decomposition")
    assert dec is not None and "loss per token" in dec.message


def test_a_causal_lm_r_is_per_predicted_token_like_c(tmp_path):
    """Rows of 6 to 20 tokens: a Trainer that counts each row's first label (transformers >= 4.46 without
    ``_loss_shifts_labels``) logs a loss about 7 % below the model's. After the callback's correction the
    training loss R and the end-of-epoch train-mode loss T differ by the within-epoch drift only."""
    train_ds, val_ds = Varlen(96, 1), Varlen(40, 2)
    trainer, cb = train(tmp_path, gpt2(), train_ds, val_ds, pad, epochs=3)
    run = cb.lens.run
    scale = run.meta.get("reported_loss_token_scale", 1.0)
    lab = pad([train_ds[i] for i in range(len(train_ds))])["labels"]
    if scale != 1.0:   # the ratio of predicted to counted labels over the training set
        assert scale == pytest.approx(float((lab[:, 1:] != -100).sum()) / float((lab != -100).sum()), rel=1e-9)
        # the report says why V is above the Trainer's logged eval_loss
        from losslens.report._model import run_facts

        assert "first label" in dict(run_facts(run))["logged losses"]
    last = run.epochs[-1]
    r, t = last.train_loss, last.get("train_mode").mean
    assert abs(r - t) < 0.5 * abs(1 - 13 / 12) * t + 0.05 * t   # far below the uncorrected offset


def test_masked_lm_records_token_weighted_probes_without_stopping(tmp_path):
    """A masked LM whose collator masks at random: the probe passes run under a seeded generator (the same
    masks at every epoch), each sample weighs its masked tokens, and the mean is the model's loss on those
    batches."""
    train_ds, val_ds = Varlen(96, 1), Varlen(40, 2)
    model = bert("BertForMaskedLM")
    trainer, cb = train(tmp_path, model, train_ds, val_ds, masked)
    run = cb.lens.run
    assert trainer.state.global_step == 24 and not run.meta.get("measurement_errors")
    c0, c1 = run.epochs[0].get("eval_clean"), run.epochs[1].get("eval_clean")
    assert c0.weights is not None and np.array_equal(c0.weights, c1.weights)   # same masks at each epoch
    assert np.all(c0.weights >= 1)
    assert run.meta["head"] == "masked_lm"


def test_per_sample_token_losses_equal_the_models_loss_on_one_batch():
    b = pad([Varlen(12, 3)[i] for i in range(12)])
    for model, head in ((gpt2(), "causal_lm"), (t5(), "seq2seq_lm")):
        model.eval()
        with torch.no_grad():
            out = model(**b)
        loss = default_loss(model)
        assert isinstance(loss, TokenCrossEntropy) and loss.head == head
        per, tokens = loss.per_sample_tokens(out.logits, b["labels"])
        assert per.shape == tokens.shape == (12,)
        m = Measurement.from_values("validation", per.numpy(), weights=tokens.numpy())
        assert m.mean == pytest.approx(float(out.loss), rel=1e-5)
        assert float(loss(out.logits, b["labels"])) == pytest.approx(float(out.loss), rel=1e-5)


@pytest.mark.parametrize("num_labels,problem,labels", [
    (1, None, torch.tensor([0.5, -1.0, 2.0, 0.0])),
    (3, None, torch.tensor([0, 2, 1, 1])),
    (3, "multi_label_classification", torch.tensor([[1., 0., 1.], [0., 0., 1.], [1., 1., 1.], [0., 0., 0.]])),
])
def test_sequence_classification_losses_follow_the_problem_type(num_labels, problem, labels):
    model = bert("BertForSequenceClassification", num_labels=num_labels, problem_type=problem).eval()
    ids = torch.randint(2, VOCAB, (4, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    loss = default_loss(model)
    assert isinstance(loss, SequenceClassificationLoss)
    per = loss(out.logits, labels, reduction="none")
    assert per.shape == (4,)
    assert float(per.mean()) == pytest.approx(float(out.loss), rel=1e-5)


def test_a_head_without_a_known_loss_is_refused_before_the_first_step(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = bert("BertForQuestionAnswering")
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")
    cb = LossLens(run="qa", store=None)
    trainer = Trainer(model=model, args=args, train_dataset=Varlen(16, 0), data_collator=pad, callbacks=[cb])
    with pytest.raises(ValueError, match=r"^loss_fn: .*BertForQuestionAnswering.*pass loss_fn="):
        trainer.train()
    assert trainer.state.global_step == 0


def test_weighted_standard_error_matches_the_spread_of_the_weighted_mean():
    """The linearised standard error of a token-weighted mean (Cochran 1977, §6.4) against the spread of the
    estimator over 2000 independent draws of 200 samples whose loss depends on their length."""
    rng = np.random.default_rng(0)
    means, ses = [], []
    for _ in range(2000):
        w = rng.integers(1, 60, 200).astype(np.float64)
        v = 2.0 + 0.01 * w + rng.normal(0, 1.0, 200) / np.sqrt(w)
        m = Measurement.from_values("validation", v, weights=w)
        means.append(m.mean)
        ses.append(m.sem)
        if len(means) == 1:
            assert m.mean == pytest.approx(float((v * w).sum() / w.sum()), rel=1e-6)
            lin = m.linearized()
            assert lin.mean() == pytest.approx(m.mean, rel=1e-9)
    assert np.std(means, ddof=1) == pytest.approx(np.mean(ses), rel=0.08)
    eq = Measurement.from_values("validation", [1.0, 2.0, 4.0], weights=[3, 3, 3])
    plain = Measurement.from_values("validation", [1.0, 2.0, 4.0])
    assert eq.mean == pytest.approx(plain.mean) and eq.sem == pytest.approx(plain.sem)
    with pytest.raises(ValueError, match="weights for 'validation'"):
        Measurement.from_values("validation", [1.0, 2.0], weights=[1.0, -1.0])


def word_tokenizer(n_words: int = 30):
    """A word-level tokenizer built in memory (no hub): ``[PAD]`` 0, ``[EOS]`` 1, then ``w0`` ... ``w{n-1}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, **{f"w{i}": i + 2 for i in range(n_words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]")


def prompt_completion(n: int, seed: int):
    """Prompts of 3 to 7 words; the completion names each prompt word's successor."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    prompts, completions = [], []
    for _ in range(n):
        a = rng.integers(0, 30, int(rng.integers(3, 8)))
        prompts.append(" ".join(f"w{i}" for i in a))
        completions.append(" " + " ".join(f"w{(i + 1) % 30}" for i in a))
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


@pytest.mark.parametrize("packing", [False, True], ids=["completion-only", "packing"])
def test_trl_sft_trainer_runs_record_like_the_trainer(tmp_path, packing):
    """TRL's SFTTrainer on prompt-completion data (the loss counts completion tokens only) and with packing
    (a padding-free collator joins each batch into one row; the probes run one packed row per forward). The
    validation loss equals the SFTTrainer's eval_loss, the probes keep one loss per sample, and training is
    never interrupted."""
    pytest.importorskip("trl", minversion="0.20")
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer

    tok = word_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_layer=1, n_head=2, n_embd=32, n_positions=64,
                                       bos_token_id=1, eos_token_id=1, pad_token_id=0))
    args = SFTConfig(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
                     per_device_eval_batch_size=64, learning_rate=3e-3, logging_steps=3, eval_strategy="epoch",
                     save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0, max_length=64,
                     packing=packing)
    cb = LossLens(run="sft", store=tmp_path / "s.db", probe_size=32)
    data = prompt_completion(96, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                             eval_dataset=prompt_completion(40, 1), processing_class=tok, callbacks=[cb])
        trainer.train()
    run = cb.lens.run
    assert len(run.epochs) == 2 and not run.meta.get("measurement_errors")
    assert run.meta["per_sample_loss_check"]["consistent"] is True
    rows = len(trainer.train_dataset)
    for e in run.epochs:
        v, c, t = e.get("validation"), e.get("eval_clean"), e.get("train_mode")
        assert v.mean == pytest.approx(e.metrics["eval_loss"], rel=1e-5)
        assert v.n == len(trainer.eval_dataset) and c.n == t.n == min(32, rows)   # one loss per sample
        assert c.weights is not None and np.all(c.weights > 0)
    if not packing:   # completion-only: a sample counts its completion's words and the end of sequence only
        words = np.array([len(x.split()) for x in data["completion"]])
        np.testing.assert_array_equal(run.epochs[0].get("eval_clean").weights, words[cb.lens.probe_indices] + 1)
    assert run.meta.get("padding_free", False) is packing


def test_a_peft_lora_run_records_the_adapted_model(tmp_path):
    """LoRA adapters on a tiny GPT-2: the base weights stay frozen, the adapters train, and the probes measure
    the adapted model (its own loss on the probe samples), not the base model."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    base = gpt2()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.1,
                                            task_type="CAUSAL_LM"))
    train_ds, val_ds = Varlen(96, 1), Varlen(40, 2)
    trainer, cb = train(tmp_path, model, train_ds, val_ds, pad)
    run = cb.lens.run
    assert len(run.epochs) == 2 and not run.meta.get("measurement_errors") and run.meta["head"] == "causal_lm"
    merged = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
              for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(merged[k], v) for k, v in frozen.items())          # base frozen
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)   # adapters trained
    c = run.epochs[-1].get("eval_clean")
    adapted = model_loss(model, train_ds, cb.lens.probe_indices, pad)
    with model.disable_adapter():
        plain = model_loss(model, train_ds, cb.lens.probe_indices, pad)
    assert c.mean == pytest.approx(adapted, rel=1e-5) and abs(adapted - plain) > 1e-3


def preference_texts(n: int, rng):
    """Prompts of 3 to 5 words with a good completion (each word's successor) and a bad one (7 words on)."""
    p, c, r = [], [], []
    for _ in range(n):
        a = rng.integers(0, 30, int(rng.integers(3, 6)))
        p.append(" ".join(f"w{i}" for i in a))
        c.append(" " + " ".join(f"w{(i + 1) % 30}" for i in a))
        r.append(" " + " ".join(f"w{(i + 7) % 30}" for i in a))
    return p, c, r


def test_a_trl_dpo_run_records_the_preference_loss_without_probes_and_says_why(tmp_path):
    """TRL's DPOTrainer: its batches carry no labels and its loss is the preference loss, which per-sample LM
    losses would not measure. The run records R (the logged preference loss) and V (the trainer's eval_loss),
    no probes, and the report says what the gap does and does not mean."""
    pytest.importorskip("trl", minversion="0.20")
    import copy

    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    rng = np.random.default_rng(0)

    def pairs(n):
        p, c, r = preference_texts(n, rng)
        return Dataset.from_dict({"prompt": p, "chosen": c, "rejected": r})

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_layer=1, n_head=2, n_embd=32, n_positions=64,
                                       bos_token_id=1, eos_token_id=1, pad_token_id=0))
    args = DPOConfig(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
                     per_device_eval_batch_size=16, learning_rate=1e-3, logging_steps=3, eval_strategy="epoch",
                     save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    cb = LossLens(run="dpo", store=tmp_path / "s.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs(48),
                             eval_dataset=pairs(16), processing_class=word_tokenizer(), callbacks=[cb])
        trainer.train()
    run = cb.lens.run
    assert len(run.epochs) == 2 and "DPOTrainer" in run.meta["probes_off_reason"]
    for e, lo in zip(run.epochs, (0.0, 1.0)):
        assert set(e.measurements) == {"validation"} and e.get("validation").source == "imported"
        assert e.get("validation").mean == pytest.approx(e.metrics["eval_loss"])
        assert e.train_loss == pytest.approx(np.mean(logged_losses(trainer, lo, lo + 1.0)), rel=1e-6)
    f = diagnose(run).get("gap.not_measured")
    assert f is not None and "preference loss" in f.message


@pytest.mark.parametrize("kind", ["reward", "kto", "grpo"])
def test_trl_trainers_with_their_own_objective_record_it_without_probes(tmp_path, kind):
    """TRL's RewardTrainer (a pairwise loss on a one-logit sequence classifier), KTOTrainer (its batches carry a
    per-row desirable/undesirable ``label``, not token labels) and GRPOTrainer (prompts only; it generates and
    optimises a policy-gradient surrogate): each run trains to the end, records R and the trainer's eval_loss as V
    without probes and without measurement errors, and says why. GRPO's loss is not judged as a fit
    (``regime.surrogate_loss``, headline ``insufficient``)."""
    pytest.importorskip("trl", minversion="0.20")
    import copy

    import trl
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    rng = np.random.default_rng(0)
    cfg = dict(vocab_size=32, n_layer=1, n_head=2, n_embd=32, n_positions=64, bos_token_id=1, eos_token_id=1,
               pad_token_id=0)
    common = dict(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
                  per_device_eval_batch_size=8, learning_rate=1e-3, logging_steps=3, eval_strategy="epoch",
                  save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    torch.manual_seed(0)
    cb = LossLens(run=kind, store=tmp_path / "s.db")
    if kind == "reward":
        def data(n):
            p, c, r = preference_texts(n, rng)
            return Dataset.from_dict({"chosen": [a + b for a, b in zip(p, c)],
                                      "rejected": [a + b for a, b in zip(p, r)]})
        model = GPT2ForSequenceClassification(GPT2Config(num_labels=1, **cfg))
        make = dict(args=trl.RewardConfig(**common))
    elif kind == "kto":
        def data(n):
            p, c, r = preference_texts(n, rng)
            good = [bool(x) for x in rng.integers(0, 2, n)]
            return Dataset.from_dict({"prompt": p, "completion": [a if g else b for a, b, g in zip(c, r, good)],
                                      "label": good})
        model = GPT2LMHeadModel(GPT2Config(**cfg))
        make = dict(args=trl.KTOConfig(**common), ref_model=copy.deepcopy(model))
    else:
        def data(n):
            return Dataset.from_dict({"prompt": preference_texts(n, rng)[0]})

        def reward(completions, **kw):
            return [float(len(c)) for c in completions]
        model = GPT2LMHeadModel(GPT2Config(**cfg))
        make = dict(args=trl.GRPOConfig(num_generations=4, max_completion_length=8, **common), reward_funcs=reward)
    trainer_cls = {"reward": trl.RewardTrainer, "kto": trl.KTOTrainer, "grpo": trl.GRPOTrainer}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(model=model, train_dataset=data(32), eval_dataset=data(8),
                              processing_class=word_tokenizer(), callbacks=[cb], **make)
        trainer.train()
    run = cb.lens.run
    assert trainer.state.global_step == trainer.state.max_steps > 0          # never interrupted
    assert len(run.epochs) == 2 and not run.meta.get("measurement_errors")
    assert trainer_cls.__name__ in run.meta["probes_off_reason"]
    for e in run.epochs:
        assert set(e.measurements) == {"validation"} and e.get("validation").source == "imported"
        assert e.get("validation").mean == pytest.approx(e.metrics["eval_loss"])
    result = diagnose(run)
    if kind == "grpo":
        assert run.meta["objective"] == "policy_gradient"
        assert result.get("regime.surrogate_loss") is not None and result.verdict.code == "insufficient"
        assert not [c for c in result.codes() if c.startswith("stability.") and c != "stability.non_finite"]
    else:
        assert "objective" not in run.meta and result.get("gap.not_measured") is not None


def test_a_per_row_label_is_not_a_token_label():
    """KTO's batches have a per-row boolean ``label``: a language model's loss cannot use it (no probes); a
    sequence classifier's can."""
    from losslens.transformers._callback import _has_labels

    rows = [{"input_ids": torch.tensor([2, 3, 4]), "label": torch.tensor(True)},
            {"input_ids": torch.tensor([5, 6, 7]), "label": torch.tensor(False)}]
    assert not _has_labels(rows, "causal_lm") and _has_labels(rows, "sequence_classification")
    tokens = [{"input_ids": torch.tensor([2, 3, 4]), "labels": torch.tensor([2, 3, 4])}] * 2
    assert _has_labels(tokens, "causal_lm")
    prompts = torch.utils.data.DataLoader([{"prompt": "w1 w2"}, {"prompt": "w3"}], batch_size=2,
                                          collate_fn=lambda b: b)
    assert not _has_labels(prompts, "causal_lm")       # raw examples the trainer prepares itself (GRPO)


@pytest.mark.parametrize("metric,chosen", [(None, "a"), ("eval_b_loss", "b")])
def test_without_val_data_v_is_the_eval_set_the_best_model_is_chosen_by(tmp_path, metric, chosen):
    """``eval_dataset={"a": ..., "b": ...}`` and no ``val_data``: V is measured on the set ``metric_for_best_model``
    names, else the first; the report says which."""
    from transformers import Trainer, TrainingArguments

    from losslens.report._model import run_facts

    train_ds, a, b = Varlen(48, 1), Varlen(24, 2), Varlen(16, 3)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=8,
                             per_device_eval_batch_size=64, logging_steps=2, eval_strategy="epoch",
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                             remove_unused_columns=False, metric_for_best_model=metric)
    cb = LossLens(store=None, probe_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(model=gpt2(), args=args, train_dataset=train_ds, eval_dataset={"a": a, "b": b}, data_collator=pad,
                callbacks=[cb]).train()
    e = cb.lens.run.epochs[-1]
    v = e.get("validation")
    assert v is not None and v.n == len({"a": a, "b": b}[chosen])
    assert v.mean == pytest.approx(e.metrics[f"eval_{chosen}_loss"], rel=0.1)
    assert dict(run_facts(cb.lens.run))["validation set"] == f"eval_dataset[{chosen!r}]"


def test_validation_set_name_follows_metric_for_best_model():
    from losslens.transformers import validation_set_name

    names = ["wiki", "wiki_long", "code"]
    assert validation_set_name(names, None) == "wiki"
    assert validation_set_name(names, "eval_code_loss") == "code"
    assert validation_set_name(names, "eval_wiki_long_loss") == "wiki_long"     # the longest matching name
    assert validation_set_name(names, "wiki_accuracy") == "wiki"
    assert validation_set_name(names, "loss") == "wiki"
    assert validation_set_name([], "eval_loss") is None


def test_several_eval_datasets_go_into_the_same_recorded_epoch(tmp_path):
    """``eval_dataset={"a": ..., "b": ...}``: the Trainer evaluates each in turn at the same step; both sets'
    metrics land in that evaluation's epoch (in memory and in the store), V is the set passed as ``val_data``."""
    from transformers import Trainer, TrainingArguments

    from losslens.store import Store

    train_ds, a, b = Varlen(48, 1), Varlen(24, 2), Varlen(16, 3)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
                             per_device_eval_batch_size=64, logging_steps=2, eval_strategy="epoch",
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                             remove_unused_columns=False)
    cb = LossLens(val_data=a, run="two-evals", store=tmp_path / "s.db", probe_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(model=gpt2(), args=args, train_dataset=train_ds, eval_dataset={"a": a, "b": b}, data_collator=pad,
                callbacks=[cb]).train()
    with Store(tmp_path / "s.db") as st:
        stored = st.load_run("two-evals")
    for run in (cb.lens.run, stored):
        assert len(run.epochs) == 2
        for e in run.epochs:
            assert {"eval_a_loss", "eval_b_loss"} <= set(e.metrics)
            assert e.get("validation").mean == pytest.approx(e.metrics["eval_a_loss"], rel=0.1)
