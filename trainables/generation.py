"""What the model generates, judged at every report, on any data.

Pair accuracy and margins are what DPO optimises; they do not see a model whose generations degrade (on
SmolLM2-135M, lr 1e-3 trials kept held-out pair accuracy 0.69-0.75 while their answers collapsed). So at every
report a trial completes the first `evaluation.num_prompts` held-out prompts greedily (through the chat template
where the data is conversational) and compares them with the reference model's completions to the same prompts,
made once per sweep (by the shared reference) or once per trial (before its first step, where the adapter is
still the identity).

Label-free health, in every report (no answer key needed):

    gen_truncation_rate     completions with no end of turn within max_new_tokens (rambling, loops)
    gen_length_tokens       mean completion length, end of turn included
    gen_length_ratio        that length over the reference's (DPO drifts long: Park et al. 2024)
    gen_repeat_ngram_rate   share of a completion's token n-grams that repeat an earlier one (loops, stutter)
    gen_ref_nll_per_token   the reference model's negative log-likelihood per token of the policy's completions:
                            text the base model finds implausible (gibberish, broken syntax) scores high
    gen_seconds             what this evaluation cost (generation, scoring, rewards), for its share of the trial
    gen_kl, gen_kl_per_token  a sampled estimate of KL(policy || reference): mean over one sampled completion
                            per prompt (temperature 1) of sum log pi - log pi_ref over its tokens, and per token

and the reference's own `ref_gen_*` baselines. With reward functions (`evaluation.reward_funcs`, TRL's GRPO
contract) also `eval_reward_<name>` (the mean over prompts) and `eval_win_rate_<name>` (the share of prompts where
the policy's completion scores above the reference's, ties half).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from trainables.config import ConfigError, EvaluationSettings
from trainables.metrics import (  # noqa: F401 - the names live with the other metric names; re-exported here
    HEALTH_METRICS,
    REF_PREFIX,
    REFERENCE_BASELINES,
    is_function_spec,
    reward_name,
)

TABLE_FILE = "completions.json"  # beside each report's checkpoint: that report's completions table


# ------------------------------------------------------------------------------------------------ prompts

def render_prompt(tokenizer, prompt: Any) -> str:
    """A prompt as the model sees it: chat messages through the model's chat template."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return prompt


def completion_text(completion: Any) -> str:
    """A dataset completion as text: a string, or the content of its messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


DEFAULT_PROMPTS = 16


def select_prompts(eval_rows: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The first `n` held-out rows (None: DEFAULT_PROMPTS, or all where fewer): the prompts every report
    completes, with their other columns (the keyword arguments of the reward functions)."""
    if not eval_rows:
        raise ConfigError([("evaluation: the eval split is empty; the generation evaluation needs held-out prompts "
                           "(data.eval_fraction or data.eval_source)")])
    if n is None:
        n = min(DEFAULT_PROMPTS, len(eval_rows))
    if n > len(eval_rows):
        raise ConfigError([(f"evaluation.num_prompts: {n} prompts asked for but the eval split has "
                           f"{len(eval_rows)} rows; lower it to at most {len(eval_rows)} or give more eval rows "
                           "(data.eval_fraction or data.eval_source)")])
    return [dict(r) for r in eval_rows[:n]]


def default_max_new_tokens(tokenizer, rows: list[dict[str, Any]], settings: EvaluationSettings) -> int:
    """settings.max_new_tokens, else 1.5x the longest chosen or rejected completion of `rows` (end of turn
    included), at most max_new_tokens_cap: room to answer as the data does, and to be seen rambling."""
    if settings.max_new_tokens:
        return settings.max_new_tokens
    longest = max(len(tokenizer(completion_text(r[c]), add_special_tokens=False)["input_ids"])
                  for r in rows for c in ("chosen", "rejected"))
    return max(4, min(settings.max_new_tokens_cap, math.ceil(1.5 * (longest + 1))))


# ------------------------------------------------------------------------------------------------ generation

@dataclass
class Completions:
    ids: list[list[int]]  # each up to and including its first end of turn
    truncated: list[bool]  # no end of turn within max_new_tokens
    texts: list[str]


def end_ids(tokenizer) -> set[int]:
    """Token ids that end a turn: the tokenizer's end of sequence, and its chat template's end-of-turn marker
    (SmolLM2's <|im_end|>) where that is a single token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


@contextmanager
def contiguous_head_input(model) -> Iterator[None]:
    """While open, the LM head gets its input as one contiguous block.

    A generation's first forward projects only the last position (`hidden_states[:, -1:, :]`, a strided view).
    torch's CPU matmul does not fold a strided 3-D input onto a 2-D weight: it broadcasts the weight to every
    row and runs a batched matmul, copying the whole head once per row. SmolLM2's head is 49152 x 576 bf16,
    57 MB, so a 40-prompt batch copied 2.3 GB before its first token (measured on a 2-core CPU: 2.58 s for that
    projection against 0.012 s on a contiguous copy of the same 16 rows; a 40-prompt greedy generation took
    15.5 s, 8.6 s with this; the same tokens). A copy of one position per row costs nothing beside it.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]) if args else None)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int, sample: bool = False,
             seed: int = 0) -> Completions:
    """Completions of `texts` (rendered prompts), batched with left padding; greedy, or sampled at
    temperature 1 (no top-k, no top-p) from a seeded generator."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(p for p in model.parameters()).device
    stop = end_ids(tokenizer)
    ids, truncated = [], []
    try:
        with contiguous_head_input(model):
            if sample:
                torch.manual_seed(seed)
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                kw = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
                out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=sorted(stop), **kw)
                for row in out[:, enc["input_ids"].shape[1]:].tolist():
                    end = next((i for i, t in enumerate(row) if t in stop), None)
                    ids.append(row[: end + 1] if end is not None else row)
                    truncated.append(end is None)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return Completions(ids, truncated, tokenizer.batch_decode(ids, skip_special_tokens=True))


@torch.no_grad()
def completion_logps(model, tokenizer, texts: list[str], completions: list[list[int]], batch_size: int,
                     ) -> list[torch.Tensor]:
    """Per-token log-probs of each completion after its prompt, under `model` as it is (adapter on or off),
    through TRL's fused LM head: only the completion's tokens are projected."""
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[torch.Tensor] = []
    try:
        for start in range(0, len(texts), batch_size):
            prompts = [tokenizer(t, add_special_tokens=False)["input_ids"]
                       for t in texts[start:start + batch_size]]
            comps = completions[start:start + batch_size]
            width = max(len(p) + len(c) for p, c in zip(prompts, comps, strict=True))
            input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            labels = torch.full_like(input_ids, -100)
            mask = torch.zeros_like(input_ids)
            for i, (p, c) in enumerate(zip(prompts, comps, strict=True)):
                row = torch.tensor(p + c, dtype=torch.long)
                input_ids[i, : len(row)] = row
                mask[i, : len(row)] = 1
                labels[i, len(p): len(row)] = torch.tensor(c, dtype=torch.long)
            res = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device),
                        fused_lm_head=True, use_cache=False)
            logps = res.log_probs.float().cpu()  # [rows, width - 1]: position t scores token t + 1
            for i, (p, c) in enumerate(zip(prompts, comps, strict=True)):
                out.append(logps[i, len(p) - 1: len(p) - 1 + len(c)])
    finally:
        model.train(was_training)
    return out


def repeat_ngram_rate(ids: list[int], n: int) -> float:
    """Share of the n-grams of `ids` that already occurred earlier in `ids` (0 for fewer than n + 1 tokens)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------ rewards

@dataclass
class Reward:
    name: str  # the metric suffix
    spec: str  # as the user wrote it
    score: Callable[[list[Any], list[Any], list[list[int]], dict[str, list[Any]]], list[float | None]]


def _import_callable(spec: str, import_dir: str | None) -> Callable:
    module_name, _, attr = spec.partition(":")
    import_dir = import_dir or os.getcwd()  # `dpo-sweep trial` in the user's directory; sweeps set it (config)
    if import_dir not in sys.path:
        sys.path.insert(0, import_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix, named with its cause
        raise ConfigError([(f"evaluation.reward_funcs: {spec!r}: module {module_name!r} cannot be imported (looked "
                           f"in {import_dir} and the installed packages): {type(e).__name__}: {e}")]) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError([f"evaluation.reward_funcs: {spec!r}: module {module_name!r} has no {attr!r}"])
    if not callable(fn):
        raise ConfigError([(f"evaluation.reward_funcs: {spec!r} is not callable (it is the {type(fn).__name__} "
                           f"{fn!r:.40}); name a function")])
    return fn


def _reward_model(spec: str, device, batch_size: int, conversational: bool):
    """A sequence-classification reward model scoring prompt + completion, loaded as TRL's GRPOTrainer loads
    one (AutoModelForSequenceClassification, one label)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001
        raise ConfigError([(f"evaluation.reward_funcs: {spec!r} is neither 'module:function' nor a model directory "
                           f"or hub id transformers can read: {type(e).__name__}: {str(e)[:200]}")]) from None
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        raise ConfigError([(f"evaluation.reward_funcs: {spec!r} is a {', '.join(config.architectures or ['model'])}, "
                           "not a sequence classifier (a reward model's architecture ends in "
                           "ForSequenceClassification)")])
    model = AutoModelForSequenceClassification.from_pretrained(spec, num_labels=1).to(device).eval()
    tok = AutoTokenizer.from_pretrained(spec)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id

    @torch.no_grad()
    def score(prompts, completions, completion_ids, columns):
        if conversational and getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions, strict=True)]
        else:
            texts = [completion_text(p) + completion_text(c) for p, c in zip(prompts, completions, strict=True)]
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True)
            out += model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float().tolist()
        return out

    return score


def load_rewards(settings: EvaluationSettings, device, conversational: bool) -> list[Reward]:
    """Every reward of settings.reward_funcs, loaded (ConfigError naming the entry when one cannot be)."""
    rewards, names = [], set()
    for spec in settings.reward_funcs:
        if is_function_spec(spec):
            fn = _import_callable(spec, settings.import_dir)

            def score(prompts, completions, completion_ids, columns, fn=fn):
                return fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        else:
            score = _reward_model(spec, device, settings.reward_batch_size, conversational)
        name = reward_name(spec)
        if name in names:
            raise ConfigError([(f"evaluation.reward_funcs: two entries are both named {name!r}; their metrics "
                               "(eval_reward_<name>) would collide")])
        names.add(name)
        rewards.append(Reward(name, spec, score))
    return rewards


def call_reward(reward: Reward, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                columns: dict[str, list[Any]]) -> list[float | None]:
    """The reward's scores, checked: one number (or None: not scored) per completion; ValueError otherwise."""
    scores = reward.score(prompts, completions, completion_ids, columns)
    scores = list(scores) if scores is not None else None
    if scores is None or len(scores) != len(completions):
        got = "None" if scores is None else f"{len(scores)} values"
        raise ValueError(f"returned {got} for {len(completions)} completions; return one float (or None) each")
    bad = [s for s in scores if s is not None and not (isinstance(s, (int, float)) and not isinstance(s, bool))]
    if bad:
        raise ValueError(f"returned {type(bad[0]).__name__} {bad[0]!r}; return floats (or None where unscored)")
    return [None if s is None else float(s) for s in scores]


def smoke_test_rewards(rewards: list[Reward], rows: list[dict[str, Any]], conversational: bool) -> list[str]:
    """Preflight: each reward called on two held-out rows with their chosen completions; the problems."""
    prompts = [r["prompt"] for r in rows[:2]]
    completions = [r["chosen"] if conversational else completion_text(r["chosen"]) for r in rows[:2]]
    columns = {k: [r.get(k) for r in rows[:2]] for k in rows[0] if k != "prompt"}
    problems = []
    for reward in rewards:
        try:
            call_reward(reward, prompts, completions, [[] for _ in prompts], columns)
        except Exception as e:  # noqa: BLE001 - every failure of the smoke call is the finding
            problems.append(f"evaluation.reward_funcs: {reward.spec!r} failed on two held-out rows: "
                            f"{type(e).__name__}: {str(e)[:300]}")
    return problems


# ------------------------------------------------------------------------------------------------ the evaluation

class GenerationEval:
    """Completes the held-out prompts at a report and scores the completions against the reference's."""

    def __init__(self, settings: EvaluationSettings, tokenizer, rows: list[dict[str, Any]], conversational: bool,
                 batch_size: int, rewards: list[Reward], max_new_tokens: int, log=print):
        self.settings, self.tokenizer, self.rows = settings, tokenizer, rows
        self.conversational, self.batch_size, self.rewards, self.log = conversational, batch_size, rewards, log
        self.max_new_tokens = max_new_tokens
        self.texts = [render_prompt(tokenizer, r["prompt"]) for r in rows]
        self.reference: dict[str, Any] | None = None  # state(): the reference's completions and figures

    def _as_completion(self, text: str) -> Any:
        return [{"role": "assistant", "content": text}] if self.conversational else text

    def _rewards(self, completions: Completions, where: str) -> dict[str, list[float | None]]:
        prompts = [r["prompt"] for r in self.rows]
        columns = {k: [r.get(k) for r in self.rows] for k in self.rows[0] if k != "prompt"}
        out = {}
        for reward in self.rewards:
            try:
                out[reward.name] = call_reward(reward, prompts, [self._as_completion(t) for t in completions.texts],
                                               completions.ids, columns)
            except Exception as e:  # noqa: BLE001 - a reward failing mid-sweep: this report lacks it, the trial goes on
                self.log(f"[trial] reward {reward.spec!r} failed on the {where}'s completions "
                         f"({type(e).__name__}: {str(e)[:300]}); eval_reward_{reward.name} is missing from this report")
        return out

    def set_reference(self, model) -> None:
        """Generate and score the reference's completions with `model` as the reference (a fresh adapter, or
        the adapter disabled by the caller)."""
        greedy = generate(model, self.tokenizer, self.texts, self.max_new_tokens, self.batch_size)
        nll = completion_logps(model, self.tokenizer, self.texts, greedy.ids, self.batch_size)
        self.reference = {
            "ids": greedy.ids, "truncated": greedy.truncated, "texts": greedy.texts,
            "rewards": self._rewards(greedy, "reference model"),
            "metrics": self._health_of(greedy, nll),
        }

    def load_reference(self, state: dict[str, Any]) -> None:
        self.reference = state

    def _health_of(self, c: Completions, ref_logps: list[torch.Tensor]) -> dict[str, float]:
        tokens = [len(i) for i in c.ids]
        return {"gen_truncation_rate": _mean(c.truncated), "gen_length_tokens": _mean(tokens),
                "gen_repeat_ngram_rate": _mean(repeat_ngram_rate(i, self.settings.ngram) for i in c.ids),
                "gen_ref_nll_per_token": -float(torch.cat(ref_logps).mean()) if sum(tokens) else float("nan")}

    def reference_metrics(self) -> dict[str, float]:
        """The reference's baselines (`ref_gen_*`, `ref_eval_reward_<name>`), carried in every report."""
        m = {REF_PREFIX + k: v for k, v in self.reference["metrics"].items()}
        for name, scores in self.reference["rewards"].items():
            m[f"{REF_PREFIX}eval_reward_{name}"] = _mean(s for s in scores if s is not None)
        return m

    def evaluate(self, model, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(metrics, completions table rows) of `model` (a PEFT model: the adapter is the policy, the adapter
        disabled the reference)."""
        if self.reference is None:
            raise RuntimeError("GenerationEval.evaluate before the reference's completions were made")
        start = time.perf_counter()
        greedy = generate(model, self.tokenizer, self.texts, self.max_new_tokens, self.batch_size)
        try:
            sampled = generate(model, self.tokenizer, self.texts, self.max_new_tokens, self.batch_size, sample=True,
                               seed=step)
        except RuntimeError as e:  # a diverged policy's probabilities are NaN: nothing to sample from
            if "nan" not in str(e).lower() and "inf" not in str(e).lower():
                raise
            sampled = None
        with model.disable_adapter():
            ref_on_greedy = completion_logps(model, self.tokenizer, self.texts, greedy.ids, self.batch_size)
            ref_on_sampled = (completion_logps(model, self.tokenizer, self.texts, sampled.ids, self.batch_size)
                              if sampled else None)
        m = self._health_of(greedy, ref_on_greedy)
        ref_len = self.reference["metrics"]["gen_length_tokens"]
        m["gen_length_ratio"] = m["gen_length_tokens"] / ref_len if ref_len else float("nan")
        m["gen_kl"] = m["gen_kl_per_token"] = float("nan")  # NaN: the trial diverged (its report says so)
        if sampled is not None:
            policy_lp = completion_logps(model, self.tokenizer, self.texts, sampled.ids, self.batch_size)
            kl = [float((p - r).sum()) for p, r in zip(policy_lp, ref_on_sampled, strict=True)]
            n_tok = sum(len(i) for i in sampled.ids)
            m["gen_kl"] = _mean(kl)
            m["gen_kl_per_token"] = sum(kl) / n_tok if n_tok else float("nan")
        rewards = self._rewards(greedy, "policy")
        for name, scores in rewards.items():
            ref_scores = self.reference["rewards"].get(name)
            scored = [s for s in scores if s is not None]
            if scored:
                m[f"eval_reward_{name}"] = _mean(scored)
            if ref_scores is not None:
                pairs = [(a, b) for a, b in zip(scores, ref_scores, strict=True) if a is not None and b is not None]
                if pairs:
                    m[f"eval_win_rate_{name}"] = _mean(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs)
        m["gen_seconds"] = time.perf_counter() - start  # this evaluation's cost: generation, scoring, rewards
        m["gen_prompts"] = len(self.texts)  # the resolution of the win rates: 1 / gen_prompts
        table = []
        for i, row in enumerate(self.rows):
            entry = {"step": step, "prompt": self.texts[i], "reference": self.reference["texts"][i],
                     "policy": greedy.texts[i], "policy_truncated": greedy.truncated[i]}
            for name, scores in rewards.items():
                entry[f"reward_{name}"] = scores[i]
                entry[f"reference_reward_{name}"] = self.reference["rewards"].get(name, [None] * len(self.rows))[i]
            table.append(entry)
        return m, table


def build_generation_eval(spec, tokenizer, eval_rows: list[dict[str, Any]], conversational: bool, device,
                          log=print, shared: dict[str, Any] | None = None) -> GenerationEval:
    """The trial's generation evaluation (`spec`: a TrialSpec). `shared`: the shared reference's 'generation'
    entry (its prompts, max_new_tokens and the reference's completions, made once for the sweep)."""
    settings = spec.evaluation
    if shared is not None:
        rows, max_new = shared["rows"], shared["max_new_tokens"]
    else:
        rows = select_prompts(eval_rows, settings.num_prompts)
        max_new = default_max_new_tokens(tokenizer, rows, settings)
    rewards = load_rewards(settings, device, conversational)
    gen = GenerationEval(settings, tokenizer, rows, conversational, spec.dpo.per_device_eval_batch_size, rewards,
                         max_new, log=log)
    if shared is not None:
        gen.load_reference(shared["reference"])
    return gen


def shared_entry(gen: GenerationEval) -> dict[str, Any]:
    """What the shared reference stores for every trial: the prompts, max_new_tokens and the reference's
    completions (GenerationEval.set_reference must have run)."""
    return {"rows": gen.rows, "max_new_tokens": gen.max_new_tokens, "reference": gen.reference}
